// Abuse: bad signatures, replays and over-limit traffic mixed with good traffic.
// Good requests must keep succeeding; bad ones must all be refused.
import http from "k6/http";
import { check } from "k6";
import { BASE, CHAT_BODY, chat, signedHeaders } from "./lib.js";

export const options = {
  scenarios: {
    good: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 20, exec: "good" },
    forged: { executor: "constant-arrival-rate", rate: 100, timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 20, exec: "forged" },
    replay: { executor: "constant-arrival-rate", rate: 50, timeUnit: "1s", duration: __ENV.DURATION || "15s", preAllocatedVUs: 20, exec: "replay" },
  },
  thresholds: {
    "checks{kind:good}": ["rate==1"],
    "checks{kind:forged}": ["rate==1"],
    "checks{kind:replay}": ["rate==1"],
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
