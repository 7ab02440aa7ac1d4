// tokenproxy is a Linux service: it uses Glibc's flock, fsync and O_NOFOLLOW for the token
// store, /proc for its file-descriptor budget, malloc_trim, and systemd's notify socket. A build
// elsewhere stops here rather than with a hundred missing symbols.
#if !os(Linux)
#error("tokenproxy builds on Linux only (Glibc, /proc, systemd); see Package.swift")
#endif
