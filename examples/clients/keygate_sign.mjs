// Sign and send one request to keygate (keygate-v1). Node 18+, no dependencies.
//   KEYGATE_SECRET=kgs_... node keygate_sign.mjs URL KEY_ID [JSON_BODY]
import crypto from "node:crypto";

export function keygateHeaders(method, url, body, keyId, secret) {
  const u = new URL(url);
  const authority = u.host.toLowerCase(); // URL drops the scheme's default port
  const digest = `sha-256=:${crypto.createHash("sha256").update(body).digest("base64")}:`;
  const nonce = crypto.randomBytes(16).toString("base64url"); // fresh per request
  const created = Math.floor(Date.now() / 1000);
  const params =
    `("@method" "@authority" "@path" "@query" "content-digest");created=${created}` +
    `;keyid="${keyId}";alg="hmac-sha256";nonce="${nonce}";tag="keygate-v1"`;
  const base = [
    `"@method": ${method}`,
    `"@authority": ${authority}`,
    `"@path": ${u.pathname || "/"}`,
    `"@query": ?${u.search.slice(1)}`,
    `"content-digest": ${digest}`,
    `"@signature-params": ${params}`,
  ].join("\n");
  const sig = crypto.createHmac("sha256", secret).update(base).digest("base64");
  return { "Content-Digest": digest, "Signature-Input": `sig1=${params}`, Signature: `sig1=:${sig}:` };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [url, keyId, body = ""] = process.argv.slice(2);
  const method = body ? "POST" : "GET";
  const headers = keygateHeaders(method, url, body, keyId, process.env.KEYGATE_SECRET);
  if (body) headers["Content-Type"] = "application/json";
  const res = await fetch(url, { method, headers, body: body || undefined });
  console.log(res.status);
  console.log(await res.text());
}
