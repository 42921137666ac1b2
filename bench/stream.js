// Streams at a fixed rate: signed streamed chat completions through keygate (or through the
// bare Pingora proxy, which forwards the headers) to keygate's mock provider, or plain ones
// straight to it (TARGET=direct) for the baseline measured in the same run. k6 reports the
// whole stream (http_req_duration) and the time to its first byte (http_req_waiting).
import { check } from "k6";
import { fixedRate, post } from "./lib.js";

const BODY = JSON.stringify({ model: "gpt-4o-mini", stream: true, messages: [{ role: "user", content: "hi" }] });

export const options = fixedRate(200, "10s", 50);

export default function () {
  check(post(BODY), { "whole stream": (r) => r.status === 200 && String(r.body).endsWith("data: [DONE]\n\n") });
}
