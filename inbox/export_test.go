package inbox

// SetAfterCommit installs a hook that runs after a message's transaction
// committed and before its ack: the place where a crash makes the broker
// redeliver a message that was already applied.
func SetAfterCommit(c *Config, f func(Message)) {
	c.hooks = &testHooks{afterCommit: f}
}
