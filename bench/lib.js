// What the fixed-rate bench scripts share: the scenario, and one POST to TARGET_URL, signed
// with keygate-v1 unless TARGET=direct (the bare Pingora proxy forwards the headers, nginx
// ignores them, so the client does the same work on every path but the direct one).
import http from "k6/http";
import { signedHeaders } from "../load-tests/lib.js";

// Constant arrival rate (RATE, DURATION override the defaults); k6's samples carry only the
// status tag, so k6 (on the same two cores) takes less CPU from what it measures.
export function fixedRate(rate, duration, vus, extra = {}) {
  return Object.assign(
    {
      scenarios: {
        fixed: { executor: "constant-arrival-rate", rate: Number(__ENV.RATE || rate), timeUnit: "1s", duration: __ENV.DURATION || duration, preAllocatedVUs: vus, maxVUs: 4 * vus },
      },
      systemTags: ["status"],
      summaryTrendStats: ["avg", "p(50)", "p(99)", "p(99.9)", "max"],
    },
    extra,
  );
}

export function post(body) {
  const url = __ENV.TARGET_URL;
  let headers = { "Content-Type": "application/json" };
  if (__ENV.TARGET !== "direct") headers = Object.assign(headers, signedHeaders("POST", url, body));
  return http.post(url, body, { headers });
}
