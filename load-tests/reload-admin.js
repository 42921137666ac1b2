// Admin changes under load: steady signed traffic for an untouched site while run.sh creates
// a site and disables the one before through the admin API every second; nothing may fail.
import { check } from "k6";
import { chat } from "./lib.js";

export const options = {
  scenarios: {
    steady: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: __ENV.DURATION || "10s", preAllocatedVUs: 20, maxVUs: 100 },
  },
  thresholds: { http_req_failed: ["rate==0"], checks: ["rate==1"] },
};

export default function () {
  check(chat(), { "200 during admin changes": (r) => r.status === 200 });
}
