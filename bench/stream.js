// Streams at a fixed rate: signed streamed chat completions through keygate (or through the
// bare Pingora proxy, which forwards the headers) to keygate's mock provider, or plain ones
// straight to it (TARGET=direct) for the baseline measured in the same run. k6 reports the
// whole stream (http_req_duration) and the time to its first byte (http_req_waiting).
import http from "k6/http";
import { check } from "k6";
import { signedHeaders } from "../load-tests/lib.js";

const BODY = JSON.stringify({ model: "gpt-4o-mini", stream: true, messages: [{ role: "user", content: "hi" }] });

export const options = {
  scenarios: {
    fixed: { executor: "constant-arrival-rate", rate: Number(__ENV.RATE || 200), timeUnit: "1s", duration: __ENV.DURATION || "10s", preAllocatedVUs: 50, maxVUs: 200 },
  },
  systemTags: ["status"],
  summaryTrendStats: ["avg", "p(50)", "p(99)", "p(99.9)", "max"],
};

export default function () {
  const url = __ENV.TARGET_URL;
  let headers = { "Content-Type": "application/json" };
  if (__ENV.TARGET !== "direct") headers = Object.assign(headers, signedHeaders("POST", url, BODY));
  const r = http.post(url, BODY, { headers });
  check(r, { "whole stream": (r) => r.status === 200 && String(r.body).endsWith("data: [DONE]\n\n") });
}
