// Abuse: bad signatures, replays and over-limit traffic mixed with good traffic.
// Good requests must keep succeeding; bad ones must all be refused, and the over-limit site
// is served up to its limit and refused past it.
import http from "k6/http";
import { check } from "k6";
import { Counter, Rate } from "k6/metrics";
import { BASE, CHAT_BODY, chat, signedHeaders } from "./lib.js";

// The over-limit traffic comes from a second site whose tier allows 60 requests a minute.
const FLOOD_KEY_ID = __ENV.KEYGATE_FLOOD_KEY_ID || "flood.k1";
const FLOOD_SECRET = __ENV.KEYGATE_FLOOD_SECRET;
const overLimitServed = new Counter("over_limit_served");
const overLimitRefused = new Rate("over_limit_refused");

export const options = {
  scenarios: {
    good: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 20, exec: "good" },
    forged: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 20, exec: "forged" },
    replay: { executor: "constant-arrival-rate", rate: 50, timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 20, exec: "replay" },
    // 15 s whatever DURATION says: the served bound below is for 15 s of traffic.
    over_limit: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: "15s", preAllocatedVUs: 20, exec: "overLimit" },
  },
  thresholds: {
    "checks{kind:good}": ["rate==1"],
    "checks{kind:forged}": ["rate==1"],
    "checks{kind:replay}": ["rate==1"],
    "checks{kind:over_limit}": ["rate==1"],
    // Served up to its limit: 60 a minute, and in a run that crosses into the next minute
    // the sliding window lets about one more through a second; not refused outright.
    over_limit_served: ["count>=50", "count<=120"],
    over_limit_refused: ["rate>0.5"],
  },
};

export function good() {
  check(chat({}, { kind: "good" }), { "good request served": (r) => r.status === 200 }, { kind: "good" });
}

export function forged() {
  const url = `${BASE}/openai/v1/chat/completions`;
  const headers = Object.assign({ "Content-Type": "application/json" }, signedHeaders("POST", url, CHAT_BODY, "kgs_not_the_secret_0Zx9Qm2Lp7"));
  const r = http.post(url, CHAT_BODY, { headers, tags: { kind: "forged" } });
  check(r, { "forged request refused": (r) => r.status === 401 || r.status === 429 }, { kind: "forged" });
}

export function replay() {
  const url = `${BASE}/openai/v1/chat/completions`;
  const headers = Object.assign({ "Content-Type": "application/json" }, signedHeaders("POST", url, CHAT_BODY));
  const first = http.post(url, CHAT_BODY, { headers, tags: { kind: "replay_first" } });
  const again = http.post(url, CHAT_BODY, { headers, tags: { kind: "replay" } });
  check(again, { "replay refused": (r) => r.status === 401 && r.json("error.code") === "replayed" }, { kind: "replay" });
  check(first, { "original served": (r) => r.status === 200 }, { kind: "good" });
}

export function overLimit() {
  const url = `${BASE}/openai/v1/chat/completions`;
  const headers = Object.assign({ "Content-Type": "application/json" }, signedHeaders("POST", url, CHAT_BODY, FLOOD_SECRET, FLOOD_KEY_ID));
  const r = http.post(url, CHAT_BODY, { headers, tags: { kind: "over_limit" } });
  const refused = r.status === 429;
  overLimitServed.add(r.status === 200 ? 1 : 0);
  overLimitRefused.add(refused);
  check(
    r,
    {
      "over the limit: served within it, then 429 rate_limited with Retry-After": (r) =>
        r.status === 200 || (refused && r.json("error.code") === "rate_limited" && r.headers["Retry-After"] !== undefined),
    },
    { kind: "over_limit" },
  );
}
