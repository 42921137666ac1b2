fn main() {
    // Keys live in this process's memory: no core dumps, no ptrace by other users.
    // SAFETY: prctl/setrlimit with constant arguments only change this process's flags.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
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
