fn main() {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // Pingora's debug logs print request and response headers, which can hold
    // credentials: cap its crates at info whatever RUST_LOG says.
    for module in [
        "pingora",
        "pingora_core",
        "pingora_proxy",
        "pingora_pool",
        "pingora_cache",
        "h2",
        "hyper",
    ] {
        logger.filter_module(module, log::LevelFilter::Info);
    }
    logger.init();
    std::process::exit(keygate::cli::run());
}
