// Steady: a constant arrival rate of signed chat requests (each with a fresh nonce).
import { check } from "k6";
import { chat } from "./lib.js";

export const options = {
  scenarios: {
    steady: {
      executor: "constant-arrival-rate",
      rate: Number(__ENV.RATE || 200),
      timeUnit: "1s",
      duration: __ENV.DURATION || "20s",
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.001"],
    http_req_duration: ["p(95)<50", "p(99)<100"],
    checks: ["rate>0.999"],
  },
};

export default function () {
  check(chat(), { "200": (r) => r.status === 200 });
}
