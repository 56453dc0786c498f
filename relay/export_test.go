package relay

// SkipRowChecks makes a relay publish rows without checking them against
// AMQP's and the broker's limits, so a test can send a row that kills the
// connection and watch the suspect isolation deal with it.
func SkipRowChecks(c *Config) { c.skipRowChecks = true }

// EmptyWakeHoldoff is how long a worker ignores notifications after one
// that found nothing.
const EmptyWakeHoldoff = emptyWakeHoldoff
