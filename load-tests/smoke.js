// Smoke: every kind of request once a few times; any failure fails the run.
import { check } from "k6";
import { chat, models, stream } from "./lib.js";

export const options = {
  vus: 1,
  iterations: 10,
  thresholds: { checks: ["rate==1"], http_req_failed: ["rate==0"] },
};

export default function () {
  const c = chat();
  check(c, { "chat 200": (r) => r.status === 200, "chat has choices": (r) => r.json("choices.0.message.content") !== undefined });
  check(models(), { "models 200": (r) => r.status === 200 });
  const s = stream();
  check(s, { "stream 200": (r) => r.status === 200, "stream ends with [DONE]": (r) => r.body.endsWith("data: [DONE]\n\n") });
}
