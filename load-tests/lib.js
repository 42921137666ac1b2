// keygate-v1 request signing for k6 (RFC 9421 profile, SPEC §1). Every call signs with
// a fresh nonce, so every request is a new one.
import crypto from "k6/crypto";
import encoding from "k6/encoding";
import http from "k6/http";

export const BASE = __ENV.KEYGATE_URL || "http://127.0.0.1:8080";
export const KEY_ID = __ENV.KEYGATE_KEY_ID || "load.k1";
export const SECRET = __ENV.KEYGATE_SECRET;

export function signedHeaders(method, url, body, secret = SECRET, keyId = KEY_ID) {
  const u = url.match(/^(https?):\/\/([^/]+)(\/[^?]*)?(\?.*)?$/);
  const scheme = u[1];
  let authority = u[2].toLowerCase();
  if ((scheme === "http" && authority.endsWith(":80")) || (scheme === "https" && authority.endsWith(":443"))) {
    authority = authority.replace(/:\d+$/, "");
  }
  const path = u[3] || "/";
  const query = u[4] ? u[4].slice(1) : "";
  const digest = `sha-256=:${crypto.sha256(body || "", "base64")}:`;
  const nonce = encoding.b64encode(crypto.randomBytes(16), "rawurl");
  const created = Math.floor(Date.now() / 1000);
  const params =
    `("@method" "@authority" "@path" "@query" "content-digest");created=${created}` +
    `;keyid="${keyId}";alg="hmac-sha256";nonce="${nonce}";tag="keygate-v1"`;
  const base = [
    `"@method": ${method}`,
    `"@authority": ${authority}`,
    `"@path": ${path}`,
    `"@query": ?${query}`,
    `"content-digest": ${digest}`,
    `"@signature-params": ${params}`,
  ].join("\n");
  const sig = crypto.hmac("sha256", secret, base, "base64");
  return {
    "Content-Digest": digest,
    "Signature-Input": `sig1=${params}`,
    Signature: `sig1=:${sig}:`,
  };
}

export const CHAT_BODY = JSON.stringify({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "hi" }],
});

export function chat(extraHeaders = {}, tags = {}) {
  const url = `${BASE}/openai/v1/chat/completions`;
  const headers = Object.assign({ "Content-Type": "application/json" }, signedHeaders("POST", url, CHAT_BODY), extraHeaders);
  return http.post(url, CHAT_BODY, { headers, tags });
}

export function models(tags = {}) {
  const url = `${BASE}/openai/v1/models?limit=5`;
  return http.get(url, { headers: signedHeaders("GET", url, ""), tags });
}

export function stream(tags = {}) {
  const url = `${BASE}/openai/v1/chat/completions`;
  const body = JSON.stringify({ model: "gpt-4o-mini", stream: true, messages: [{ role: "user", content: "hi" }] });
  const headers = Object.assign({ "Content-Type": "application/json" }, signedHeaders("POST", url, body));
  return http.post(url, body, { headers, tags });
}
