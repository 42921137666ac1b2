<?php
// Self-service registration, as a WordPress plugin would do it (PHP 7.4+ with curl).
//   php keygate_register.php register GATEWAY_URL SITE_URL EMAIL   -> {"registration_id","poll_token"}
//   KEYGATE_POLL_TOKEN=kgp_... php keygate_register.php poll GATEWAY_URL REGISTRATION_ID
// The owner confirms the e-mailed link; the plugin polls (every few seconds) until the
// answer carries the site's key id and secret, exactly once: store them then (the secret
// is never shown again), and sign every request with keygate_sign.php.

function keygate_http(string $method, string $url, ?string $body, array $headers): array
{
    $ch = curl_init($url);
    $opts = [CURLOPT_CUSTOMREQUEST => $method, CURLOPT_HTTPHEADER => $headers,
        CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 15];
    if ($body !== null) {
        $opts[CURLOPT_POSTFIELDS] = $body;
    }
    curl_setopt_array($ch, $opts);
    $resp = curl_exec($ch);
    return [curl_getinfo($ch, CURLINFO_RESPONSE_CODE), json_decode((string)$resp, true)];
}

/** Ask for a site; returns [registration_id, poll_token] (keep both). */
function keygate_register(string $gateway, string $siteUrl, string $email): array
{
    [$status, $json] = keygate_http('POST', rtrim($gateway, '/') . '/keygate/v1/registrations',
        json_encode(['site_url' => $siteUrl, 'email' => $email]), ['Content-Type: application/json']);
    if ($status !== 202) {
        throw new RuntimeException("registration refused ($status): " . json_encode($json));
    }
    return [$json['registration_id'], $json['poll_token']];
}

/** null while the e-mail is not confirmed; then ['site_id', 'key_id', 'secret'] once. */
function keygate_poll(string $gateway, string $id, string $pollToken): ?array
{
    [$status, $json] = keygate_http('GET', rtrim($gateway, '/') . '/keygate/v1/registrations/' . rawurlencode($id),
        null, ['Authorization: Bearer ' . $pollToken]);
    if ($status === 202) {
        return null;
    }
    if ($status === 200) {
        return $json;
    }
    throw new RuntimeException("poll failed ($status): " . json_encode($json));
}

if (PHP_SAPI === 'cli' && realpath($argv[0]) === __FILE__) {
    if ($argv[1] === 'register') {
        [$id, $token] = keygate_register($argv[2], $argv[3], $argv[4]);
        echo json_encode(['registration_id' => $id, 'poll_token' => $token]), "\n";
    } else {
        $got = keygate_poll($argv[2], $argv[3], getenv('KEYGATE_POLL_TOKEN'));
        echo $got === null ? "pending\n" : json_encode($got) . "\n";
    }
}
