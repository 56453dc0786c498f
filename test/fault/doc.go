// Package fault is the fault suite: real `relay run` processes drain rows
// while relays are killed, brokers stop, connections are cut, PostgreSQL
// restarts and the broker raises a resource alarm. Each scenario prints
// delivered / duplicates / lost and fails on any loss.
//
// It restarts the shared local services, so it runs on its own after the
// other packages (`make fault`, part of `make test`), and only with the
// build tag "fault". It needs the local-process services (not Docker).
package fault
