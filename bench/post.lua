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
-- CHURN=N: every Nth request asks for `Connection: close`, so each connection (and its TLS
-- handshake) serves about N requests before wrk opens a new one.
local churn = tonumber(os.getenv("CHURN") or "")
if churn and churn > 0 then
  local n, plain, closing = 0, nil, nil
  request = function()
    if not plain then
      plain = wrk.format()
      local h = {}
      for k, v in pairs(wrk.headers) do h[k] = v end
      h["Connection"] = "close"
      closing = wrk.format(nil, nil, h)
    end
    n = n + 1
    if n % churn == 0 then return closing end
    return plain
  end
end
