// Fixed-rate latency: signed requests through keygate (or through the bare Pingora proxy, which
// forwards the headers), or plain ones straight to the upstream (TARGET=direct) for the
// baseline measured in the same run.
import http from "k6/http";
import { check } from "k6";
import { signedHeaders, CHAT_BODY } from "../load-tests/lib.js";

export const options = {
  scenarios: {
    fixed: { executor: "constant-arrival-rate", rate: Number(__ENV.RATE || 1000), timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 100, maxVUs: 400 },
  },
  // Lean client: bodies are not copied into JS and samples carry only the status tag, so k6
  // (on the same two cores) takes less CPU from what it measures.
  discardResponseBodies: true,
  systemTags: ["status"],
  summaryTrendStats: ["avg", "p(50)", "p(99)", "p(99.9)", "max"],
};

export default function () {
  const url = __ENV.TARGET_URL;
  let headers = { "Content-Type": "application/json" };
  if (__ENV.TARGET !== "direct") headers = Object.assign(headers, signedHeaders("POST", url, CHAT_BODY));
  check(http.post(url, CHAT_BODY, { headers }), { "200": (r) => r.status === 200 });
}
