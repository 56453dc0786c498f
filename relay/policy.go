package relay

// FailurePolicy is how a relay treats rows the broker will not route:
// Config.ParkUnroutable.
//
// Why retrying is the default: an unroutable row (no queue bound to its
// routing key) or a row sent to an exchange that does not exist is
// usually not the row's fault but the topology's, and topology is often
// declared by the consumers, which may start after the producer has
// written. Retrying with backoff delivers those rows, untouched, once the
// binding or exchange appears. An operator who knows the topology is
// declared before anything is written (a misspelled exchange can then
// only be a bug) sets park_unroutable, so such a row is dead, visible and
// requeueable at its first failure, and never holds its key for the
// minutes max_attempts of backoff would take.

// parksAtOnce says whether a failed attempt parks its row dead now: a
// failure the broker will never accept (permanent), the attempt that
// reaches maxAttempts, or, under parkUnroutable, a row the broker returned
// as unroutable or whose exchange does not exist, at its first failure.
// attempts is the row's failed attempts before this one.
//
// The worker's settle marks a failure with permanent set to
// parksAtOnce(o.reason, o.permanent, row.attempts, w.r.cfg.MaxAttempts,
// w.r.cfg.ParkUnroutable); markFailed's own attempts + 1 >= max_attempts
// test agrees with it.
func parksAtOnce(reason string, permanent bool, attempts, maxAttempts int, parkUnroutable bool) bool {
	switch {
	case permanent:
		return true
	case maxAttempts > 0 && attempts+1 >= maxAttempts:
		return true
	case parkUnroutable:
		return reason == reasonUnroutable || reason == reasonNoExchange
	}
	return false
}
