<?php
// Sign and send one request to keygate (keygate-v1). PHP 7.4+ with curl.
//   KEYGATE_SECRET=kgs_... php keygate_sign.php URL KEY_ID [JSON_BODY]

function keygate_headers(string $method, string $url, string $body, string $keyId, string $secret): array
{
    $u = parse_url($url);
    $authority = strtolower($u['host']);
    $default = $u['scheme'] === 'https' ? 443 : 80;
    if (isset($u['port']) && (int)$u['port'] !== $default) {
        $authority .= ':' . $u['port'];
    }
    $digest = 'sha-256=:' . base64_encode(hash('sha256', $body, true)) . ':';
    $nonce = rtrim(strtr(base64_encode(random_bytes(16)), '+/', '-_'), '='); // fresh per request
    $params = '("@method" "@authority" "@path" "@query" "content-digest");created=' . time()
        . ';keyid="' . $keyId . '";alg="hmac-sha256";nonce="' . $nonce . '";tag="keygate-v1"';
    $base = implode("\n", [
        '"@method": ' . $method,
        '"@authority": ' . $authority,
        '"@path": ' . ($u['path'] ?? '/'),
        '"@query": ?' . ($u['query'] ?? ''),
        '"content-digest": ' . $digest,
        '"@signature-params": ' . $params,
    ]);
    $sig = base64_encode(hash_hmac('sha256', $base, $secret, true));
    return ['Content-Digest: ' . $digest, 'Signature-Input: sig1=' . $params, 'Signature: sig1=:' . $sig . ':'];
}

if (PHP_SAPI === 'cli' && realpath($argv[0]) === __FILE__) {
    [$url, $keyId] = [$argv[1], $argv[2]];
    $body = $argv[3] ?? '';
    $method = $body === '' ? 'GET' : 'POST';
    $headers = keygate_headers($method, $url, $body, $keyId, getenv('KEYGATE_SECRET'));
    if ($body !== '') {
        $headers[] = 'Content-Type: application/json';
    }
    $ch = curl_init($url);
    curl_setopt_array($ch, [CURLOPT_CUSTOMREQUEST => $method, CURLOPT_HTTPHEADER => $headers, CURLOPT_RETURNTRANSFER => true]);
    if ($body !== '') {
        curl_setopt($ch, CURLOPT_POSTFIELDS, $body);
    }
    $resp = curl_exec($ch);
    echo curl_getinfo($ch, CURLINFO_RESPONSE_CODE), "\n", $resp, "\n";
}
