// Fixed-rate latency: signed requests through keygate (or through the bare Pingora proxy or
// nginx proxy_pass, which forward the headers), or plain ones straight to the upstream
// (TARGET=direct) for the baseline measured in the same run.
import { check } from "k6";
import { CHAT_BODY } from "../load-tests/lib.js";
import { fixedRate, post } from "./lib.js";

// Bodies are not copied into JS: only the status is checked.
export const options = fixedRate(1000, "15s", 100, { discardResponseBodies: true });

export default function () {
  check(post(CHAT_BODY), { "200": (r) => r.status === 200 });
}
