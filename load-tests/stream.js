// Streams: SSE chat completions pass through whole and end with [DONE].
import { check } from "k6";
import { stream } from "./lib.js";

export const options = {
  scenarios: {
    streams: { executor: "constant-arrival-rate", rate: 50, timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 20, maxVUs: 100 },
  },
  thresholds: { checks: ["rate==1"], http_req_failed: ["rate==0"] },
};

export default function () {
  check(stream(), { "stream 200": (r) => r.status === 200, "[DONE]": (r) => r.body.endsWith("data: [DONE]\n\n") });
}
