import FoundationEssentials

extension TokenBroker {
    /// Keeps the token fresh until the task is cancelled: refreshes when the advisory window of
    /// the current token begins, however that token was obtained (so requests never wait for
    /// it), retries on the backoff schedule after transient failures, and watches the store and
    /// the client secret after a permanent one. A new token reschedules it at once.
    public func keepFresh() async {
        await loadStore()
        // Another process's new token (a fleet's announcement, the store file replaced) is
        // adopted at once rather than at the next need.
        watchStorage()
        defer {
            storageWatcher?.cancel()
            storageWatcher = nil
        }
        while !Task.isCancelled {
            let now = self.now()
            warnIfRefreshTokenExpiresSoon(now: now)
            var due = gate.nextCheck(now: now)
            if let warning = nextRefreshTokenWarning(after: now) { due = min(due, warning) }
            if due > now {
                await pause(for: min(Duration(timeInterval: due.timeIntervalSince(now)), .seconds(60)))
                continue
            }
            _ = try? await token(for: .fresh)
            // However the need ended, the next check is at least this far off.
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Watches the storage in force for other processes' changes, instead of the one watched
    /// until now (a reload may move the store).
    func watchStorage() {
        storageWatcher?.cancel()
        let storage = self.storage
        storageWatcher = Task { [weak self] in
            await storage.watchChanges { [weak self] in await self?.storageChanged() }
        }
    }

    /// When the refresh token's warning window begins, if that is still ahead.
    private func nextRefreshTokenWarning(after now: Date) -> Date? {
        guard let current = gate.current, current.refreshToken != nil, let expiresAt = current.refreshExpiresAt else { return nil }
        let start = expiresAt - configuration.refreshTokenWarning.timeInterval
        return start > now ? start : nil
    }

    /// Logs (on entering the window, then hourly) and tells systemd that the refresh token
    /// expires within `token.refreshTokenWarning`, so that someone logs in before it does.
    private func warnIfRefreshTokenExpiresSoon(now: Date) {
        guard let current = gate.current, current.refreshToken != nil, let expiresAt = current.refreshExpiresAt,
            now >= expiresAt - configuration.refreshTokenWarning.timeInterval
        else { return }
        if let last = lastRefreshTokenWarning, last.expiresAt == expiresAt, now.timeIntervalSince(last.at) < 3600 { return }
        lastRefreshTokenWarning = (expiresAt, now)
        let left = max(Int(expiresAt.timeIntervalSince(now)), 0)
        logger.warning("the refresh token expires soon; log in again before then (tokenproxy login)", metadata: [
            "refreshTokenExpiresAt": "\(RFC3339.format(expiresAt))", "refreshTokenExpiresIn": "\(left)s",
        ])
        observer?(.refreshTokenExpiring(expiresAt: expiresAt))
    }

    /// Sleeps for `duration`, or until ``publishCurrent()`` changes the token.
    private func pause(for duration: Duration) async {
        let sleeper = Task { _ = try? await Task.sleep(for: duration) }
        maintenancePause = sleeper
        await withTaskCancellationHandler {
            await sleeper.value
        } onCancel: {
            sleeper.cancel()
        }
        maintenancePause = nil
    }
}
