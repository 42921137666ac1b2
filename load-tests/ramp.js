// Ramp: raise the arrival rate until keygate saturates; reports where latency bends.
import { check } from "k6";
import { chat } from "./lib.js";

export const options = {
  scenarios: {
    ramp: {
      executor: "ramping-arrival-rate",
      startRate: 50,
      timeUnit: "1s",
      preAllocatedVUs: 100,
      maxVUs: 1000,
      stages: [
        { target: 500, duration: "20s" },
        { target: 2000, duration: "20s" },
        { target: 4000, duration: "20s" },
      ],
    },
  },
  thresholds: { http_req_failed: ["rate<0.01"] },
};

export default function () {
  check(chat(), { "200": (r) => r.status === 200 });
}
