import FoundationEssentials

extension TokenBroker {
    /// Keeps the token fresh until the task is cancelled: refreshes when the advisory window of
    /// the current token begins, however that token was obtained (so requests never wait for
    /// it), retries on the backoff schedule after transient failures, and watches the store and
    /// the client secret after a permanent one. A new token reschedules it at once.
    public func keepFresh() async {
        await loadStore()
        // A fleet announces each new token: adopt it at once rather than at the next need.
        let storage = self.storage
        let watcher = Task { await storage.watchChanges { [weak self] in await self?.storageChanged() } }
        defer { watcher.cancel() }
        while !Task.isCancelled {
            let now = Date()
            let due = gate.nextCheck(now: now)
            if due > now {
                await pause(for: min(Duration(timeInterval: due.timeIntervalSince(now)), .seconds(60)))
                continue
            }
            _ = try? await token(for: .fresh)
            // However the need ended, the next check is at least this far off.
            try? await Task.sleep(for: .milliseconds(10))
        }
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
