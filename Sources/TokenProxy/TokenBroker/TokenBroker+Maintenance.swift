import FoundationEssentials

extension TokenBroker {
    /// Keeps the token fresh until the task is cancelled: refreshes when the advisory window
    /// begins (so requests never wait for it), retries on the backoff schedule after transient
    /// failures, and watches the store after a permanent one.
    public func keepFresh() async {
        await loadStore()
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: nextMaintenancePause())
            } catch {
                return
            }
            _ = try? await token(for: .fresh)
        }
    }

    func nextMaintenancePause() -> Duration {
        let shortest = Duration.milliseconds(10)
        switch failure {
        case .transient(_, let retryAt, _):
            return max(ContinuousClock.now.duration(to: retryAt), shortest)
        case .permanent:
            return .seconds(2)
        case .none:
            guard let current, let deadlines = windows.deadlines(of: current) else { return shortest }
            let untilWindow = Duration(timeInterval: deadlines.refreshAt.timeIntervalSinceNow)
            return min(max(untilWindow, shortest), .seconds(60))
        }
    }
}
