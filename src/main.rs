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
    // Libraries log at info at most, and no line carries a configured secret.
    keygate::telemetry::logger::init();
    std::process::exit(keygate::cli::run());
}
