//! The command line (SPEC §3). `main.rs` only calls [`run`].

use crate::auth::signature::{self, SignRequest};
use crate::config::{self, secret, LoadOptions};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "Edge gateway that keeps AI provider keys off client machines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(short = 'c', long = "config", default_value = "conf/keygate.yaml")]
        config: PathBuf,
        /// Run on an embedded demo config with an in-process mock provider.
        #[arg(long)]
        demo: bool,
        /// Daemonize (Pingora's -d).
        #[arg(short = 'd', long)]
        daemon: bool,
        /// Take over the listeners of a running keygate (Pingora's -u).
        #[arg(short = 'u', long)]
        upgrade: bool,
    },
    /// Validate a config fully (secrets decrypt, files exist) and report its security
    /// posture; exit 0 (warnings printed) or 1 (invalid, or any warning with --strict).
    Check {
        #[arg(short = 'c', long = "config", default_value = "conf/keygate.yaml")]
        config: PathBuf,
        /// Exit 1 when there is any warning.
        #[arg(long)]
        strict: bool,
    },
    /// Print the three keygate-v1 headers for a request.
    Sign {
        #[arg(long = "key-id")]
        key_id: String,
        /// The site secret (or set KEYGATE_SECRET).
        #[arg(long, env = "KEYGATE_SECRET", hide_env_values = true)]
        secret: String,
        method: String,
        url: String,
        /// Body: a string, or @FILE.
        #[arg(long)]
        data: Option<String>,
        /// Fixed nonce (default: random).
        #[arg(long)]
        nonce: Option<String>,
        /// Fixed `created` (default: now).
        #[arg(long)]
        created: Option<i64>,
        /// Print a complete curl command instead of the headers.
        #[arg(long)]
        curl: bool,
    },
    /// Master keys and encrypted values.
    Secret {
        #[command(subcommand)]
        cmd: SecretCmd,
    },
    /// Site onboarding.
    Site {
        #[command(subcommand)]
        cmd: SiteCmd,
    },
    /// Call the admin API (signed with an `admin.keys` key): list, show, create, disable,
    /// enable, add-key, remove-key.
    Admin {
        #[command(flatten)]
        conn: crate::control::client::Conn,
        #[command(subcommand)]
        cmd: crate::control::client::AdminCmd,
    },
    /// Run the local provider stand-in.
    MockProvider {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// Serve HTTPS (with --cert and --key, default certs/out/server.{crt,key}).
        #[arg(long)]
        tls: bool,
        #[arg(long, default_value = "certs/out/server.crt")]
        cert: PathBuf,
        #[arg(long, default_value = "certs/out/server.key")]
        key: PathBuf,
        /// With --tls: speak only TLS 1.1 with RSA key exchange (a provider on an outdated
        /// stack, for testing keygate's TLS 1.2 minimum).
        #[arg(long)]
        legacy_tls: bool,
    },
    /// Print the SPKI pins of a certificate chain, leaf first.
    Pin {
        /// A PEM file with one or more certificates.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Or a live server to connect to.
        target: Option<String>,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Print a new base64 master key.
    Keygen,
    /// Re-encrypt every enc:v1 value of a config under another master key, in place.
    Rotate {
        #[arg(short = 'c', long = "config", default_value = "conf/keygate.yaml")]
        config: PathBuf,
        /// The master key id to encrypt under (must be in master_keys).
        #[arg(long)]
        to: String,
    },
    /// Encrypt a value read from stdin for one place in the config.
    Encrypt {
        #[arg(short = 'c', long = "config", default_value = "conf/keygate.yaml")]
        config: PathBuf,
        /// Master key id (from the config's master_keys).
        #[arg(long = "key-id")]
        key_id: String,
        /// The value's place, e.g. sites/demo/keys/demo.k1 or upstreams/openai/credentials/prod-1.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Generate a site key; print the secret once and a YAML snippet.
    New {
        #[arg(long)]
        id: String,
        #[arg(long)]
        tier: String,
        /// Config whose master_keys encrypt the secret in the snippet.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Master key id (default: the config's first).
        #[arg(long = "key-id")]
        key_id: Option<String>,
    },
}

fn read_data(data: Option<String>) -> Result<Vec<u8>, String> {
    match data {
        None => Ok(Vec::new()),
        Some(d) => match d.strip_prefix('@') {
            Some(path) => std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}")),
            None => Ok(d.into_bytes()),
        },
    }
}

fn master_keys_of(
    path: &PathBuf,
) -> Result<std::collections::HashMap<String, secret::MasterKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw = config::parse(&text).map_err(|e| e.to_string())?;
    let mut out = std::collections::HashMap::new();
    for (i, mk) in raw.master_keys.iter().enumerate() {
        let text = secret::read_source(&mk.source)
            .map_err(|e| format!("master_keys[{i}].source: {e}"))?
            .ok_or_else(|| format!("master_keys[{i}].source: must be env:NAME or file:/path"))?;
        let key = secret::MasterKey::from_base64(&text)
            .map_err(|e| format!("master_keys[{i}].source: {e}"))?;
        out.insert(mk.id.clone(), key);
    }
    Ok(out)
}

/// Run the command line; returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keygate: {e}");
            1
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<i32, String> {
    match cmd {
        Cmd::Serve {
            config,
            demo,
            daemon,
            upgrade,
        } => {
            crate::server::serve(crate::server::ServeOptions {
                config,
                demo,
                daemon,
                upgrade,
            })?;
            Ok(0)
        }
        Cmd::Check { config, strict } => {
            match config::check_file(&config, LoadOptions::default()) {
                Ok((rt, secret_files)) => {
                    // What starts is the YAML with the admin API's changes (the state
                    // file, without a fleet): a YAML that drops a tier an API-made site
                    // uses passed `check` and failed the start.
                    let with_changes = crate::control::read_yaml(&config).and_then(|text| {
                        crate::control::load_at_start(text, LoadOptions::default())
                    });
                    if let Err(e) = with_changes {
                        eprintln!("{}: invalid configuration", config.display());
                        eprintln!("  {e}");
                        return Ok(1);
                    }
                    let mut warnings = rt.warnings.clone();
                    warnings.extend(config::posture::posture(&rt));
                    warnings.extend(permission_warnings(&config, secret_files));
                    for w in &warnings {
                        println!("warning: {w}");
                    }
                    println!(
                        "{}: ok ({} upstreams, {} routes, {} sites, {} keys)",
                        config.display(),
                        rt.upstreams.len(),
                        rt.routes.len(),
                        rt.sites.len(),
                        rt.keys.len()
                    );
                    if strict && !warnings.is_empty() {
                        eprintln!(
                            "{}: {} warning(s) and --strict",
                            config.display(),
                            warnings.len()
                        );
                        return Ok(1);
                    }
                    Ok(0)
                }
                Err(errs) => {
                    eprintln!("{}: invalid configuration", config.display());
                    for e in &errs.0 {
                        eprintln!("  {e}");
                    }
                    Ok(1)
                }
            }
        }
        Cmd::Sign {
            key_id,
            secret,
            method,
            url,
            data,
            nonce,
            created,
            curl,
        } => {
            let body = read_data(data)?;
            let method = method.to_ascii_uppercase();
            let created = created.unwrap_or_else(crate::clock::now_s);
            if curl {
                if nonce.is_some() {
                    return Err("--curl always uses a fresh nonce".into());
                }
                println!(
                    "{}",
                    crate::auth::signature::curl::curl_command(
                        secret.as_bytes(),
                        &key_id,
                        &method,
                        &url,
                        &body,
                        created
                    )?
                );
                return Ok(0);
            }
            let nonce = nonce.unwrap_or_else(signature::random_nonce);
            let h = signature::sign(
                secret.as_bytes(),
                &SignRequest {
                    method: &method,
                    url: &url,
                    body: &body,
                    key_id: &key_id,
                    created,
                    nonce: &nonce,
                },
            )?;
            for (name, value) in h.pairs() {
                println!("{name}: {value}");
            }
            Ok(0)
        }
        Cmd::Secret {
            cmd: SecretCmd::Rotate { config, to },
        } => rotate(&config, &to),
        Cmd::Secret {
            cmd: SecretCmd::Keygen,
        } => {
            println!("{}", secret::MasterKey::generate_base64().as_str());
            Ok(0)
        }
        Cmd::Secret {
            cmd:
                SecretCmd::Encrypt {
                    config,
                    key_id,
                    name,
                },
        } => {
            let keys = master_keys_of(&config)?;
            let key = keys.get(&key_id).ok_or_else(|| {
                format!("unknown master key \"{key_id}\" in {}", config.display())
            })?;
            let mut value = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            let trimmed = value.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err("no value on stdin".into());
            }
            println!(
                "{}",
                secret::encrypt(&key_id, key, &name, trimmed.as_bytes())
            );
            Ok(0)
        }
        Cmd::Site {
            cmd:
                SiteCmd::New {
                    id,
                    tier,
                    config,
                    key_id,
                },
        } => site_new(&id, &tier, config, key_id),
        Cmd::MockProvider {
            listen,
            tls,
            cert,
            key,
            legacy_tls,
        } => {
            let acceptor = if tls {
                Some(
                    crate::mock_provider::tls_acceptor(&cert, &key, legacy_tls)
                        .map_err(|e| format!("mock-provider --tls: {e}"))?,
                )
            } else {
                None
            };
            crate::mock_provider::run(listen, acceptor)
                .map_err(|e| format!("mock-provider: {e}"))?;
            Ok(0)
        }
        Cmd::Pin { cert, target } => pin(cert, target),
        Cmd::Admin { conn, cmd } => crate::control::client::run(conn, cmd),
    }
}

fn site_new(
    id: &str,
    tier: &str,
    config: Option<PathBuf>,
    key_id: Option<String>,
) -> Result<i32, String> {
    let secret = secret::new_client_secret("kgs_");
    let kid = format!("{id}.k1");
    let value = match config {
        Some(path) => {
            let keys = master_keys_of(&path)?;
            let (mk_id, mk) = match &key_id {
                Some(k) => (
                    k.clone(),
                    keys.get(k)
                        .ok_or_else(|| format!("unknown master key \"{k}\""))?,
                ),
                None => {
                    let raw =
                        config::parse(&std::fs::read_to_string(&path).map_err(|e| e.to_string())?)
                            .map_err(|e| e.to_string())?;
                    let first = raw
                        .master_keys
                        .first()
                        .ok_or("the config has no master_keys")?
                        .id
                        .clone();
                    let k = keys.get(&first).ok_or("master key missing")?;
                    (first, k)
                }
            };
            secret::encrypt(
                &mk_id,
                mk,
                &format!("sites/{id}/keys/{kid}"),
                secret.as_bytes(),
            )
        }
        None => {
            "env:KEYGATE_SITE_SECRET   # or encrypt it: keygate site new ... -c conf/keygate.yaml"
                .to_string()
        }
    };
    println!("# Give this secret to the site (shown once):");
    println!("#   key id: {kid}");
    println!("#   secret: {}", secret.as_str());
    println!("# Add to sites: in the config, then reload (systemctl reload keygate):");
    println!("  - id: {id}");
    println!("    tier: {tier}");
    println!("    keys:");
    println!("      - {{ id: {kid}, auth: hmac, secret: \"{value}\" }}");
    Ok(0)
}

fn pin(cert: Option<PathBuf>, target: Option<String>) -> Result<i32, String> {
    use crate::upstream::pinning;
    let chain = match (cert, target) {
        (Some(path), None) => pinning::load_pem_chain(&path)?,
        (None, Some(target)) => fetch_chain(&target)?,
        _ => return Err("give either --cert FILE or HOST:PORT".into()),
    };
    for line in pinning::describe_chain(&chain) {
        println!("{line}");
    }
    Ok(0)
}

/// Connect to `host:port` and return the chain the server sends. It is printed for an
/// operator to review, not trusted: keygate checks pins against the verified chain.
fn fetch_chain(target: &str) -> Result<Vec<pingora::tls::x509::X509>, String> {
    use pingora::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let (host, _) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{target}\" is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    let connector = b.build();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(target)
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} has no address"))?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let stream = connector
        .configure()
        .map_err(|e| e.to_string())?
        .verify_hostname(false)
        .connect(host, tcp)
        .map_err(|e| format!("TLS handshake with {target} failed: {e}"))?;
    let chain: Vec<_> = stream
        .ssl()
        .peer_cert_chain()
        .map(|c| c.iter().map(|x| x.to_owned()).collect())
        .unwrap_or_default();
    if chain.is_empty() {
        return Err(format!("{target} sent no certificate"));
    }
    eprintln!("note: the chain as {target} sent it (unverified); check it before pinning");
    Ok(chain)
}

/// Group- or world-readable files holding secrets (the config included).
fn permission_warnings(config: &Path, secret_files: Vec<(String, PathBuf)>) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![("config file".to_string(), config.to_path_buf())];
    files.extend(secret_files);
    files
        .into_iter()
        .filter_map(|(what, path)| {
            let mode = std::fs::metadata(&path).ok()?.permissions().mode();
            (mode & 0o077 != 0).then(|| {
                format!(
                    "{what}: {} is readable by group or others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )
            })
        })
        .collect()
}

/// `keygate secret rotate`: re-encrypt in place, keeping comments and layout.
fn rotate(path: &PathBuf, to: &str) -> Result<i32, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw = config::parse(&text).map_err(|e| e.to_string())?;
    let keys = master_keys_of(path)?;
    let new_key = keys.get(to).ok_or_else(|| {
        format!(
            "master key \"{to}\" is not in {}'s master_keys",
            path.display()
        )
    })?;
    let mut out = text.clone();
    let values = config::encrypted_values(&raw);
    for (yaml_path, place, value) in &values {
        let plain =
            secret::decrypt(value, place, &keys).map_err(|e| format!("{yaml_path}: {e}"))?;
        let fresh = secret::encrypt(
            to,
            new_key,
            place,
            secrecy::ExposeSecret::expose_secret(&plain).as_bytes(),
        );
        if !out.contains(value.as_str()) {
            return Err(format!(
                "{yaml_path}: value not found verbatim in the file (is it split over lines?)"
            ));
        }
        out = out.replace(value.as_str(), &fresh);
    }
    // Check the result loads before replacing the file.
    config::parse(&out).map_err(|e| format!("rewritten config does not parse: {e}"))?;
    let tmp = path.with_extension("yaml.rotate-tmp");
    std::fs::write(&tmp, &out).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    println!(
        "{}: re-encrypted {} values under master key \"{to}\"; remove the old master key once every node runs this file",
        path.display(),
        values.len()
    );
    Ok(0)
}
