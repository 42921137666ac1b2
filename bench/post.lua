-- wrk: POST a chat completion; BEARER set for keygate (wrk cannot sign each request), a peer's
-- key for a peer; HEADERS adds "Name: value" headers separated by "|" (Portkey's routing).
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
local bearer = os.getenv("BEARER")
if bearer and bearer ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. bearer
end
for name, value in string.gmatch(os.getenv("HEADERS") or "", "([^|:]+):%s*([^|]+)") do
  wrk.headers[name] = value
end
