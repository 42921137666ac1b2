// Failover: steady signed traffic on the /failover/ route (upstream `primary`, fallback
// `backup`) while run.sh kills the primary provider and starts it again, twice. Nothing
// may fail: while the primary is down the backup answers. run.sh then checks that
// keygate_upstream_fallbacks_total for the route equals what the backup served.
import { check } from "k6";
import http from "k6/http";
import { BASE, CHAT_BODY, signedHeaders } from "./lib.js";

export const options = {
  scenarios: {
    steady: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: __ENV.DURATION || "12s", preAllocatedVUs: 20, maxVUs: 100 },
  },
  thresholds: { http_req_failed: ["rate==0"], checks: ["rate==1"] },
};

export default function () {
  const url = `${BASE}/failover/v1/chat/completions`;
  const headers = Object.assign({ "Content-Type": "application/json" }, signedHeaders("POST", url, CHAT_BODY));
  check(http.post(url, CHAT_BODY, { headers }), { "200 while the primary comes and goes": (r) => r.status === 200 });
}
