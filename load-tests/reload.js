// Reload: steady signed traffic while run.sh sends SIGHUP every second; nothing may fail.
import { check } from "k6";
import { chat } from "./lib.js";

export const options = {
  scenarios: {
    steady: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: __ENV.DURATION || "10s", preAllocatedVUs: 20, maxVUs: 100 },
  },
  thresholds: { http_req_failed: ["rate==0"], checks: ["rate==1"] },
};

export default function () {
  check(chat(), { "200 during reloads": (r) => r.status === 200 });
}
