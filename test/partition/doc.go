// Package partition is the partition suite: two real `relay run` processes
// drain 20,000 keyed rows (plus a trickle of inserts) into a quorum queue on
// a three-node RabbitMQ cluster whose nodes each run in a network namespace
// of their own (scripts/services.sh netns-up), while nodes are cut off from
// their peers (their clients still reach them), links flap, or the link to
// the relays' node is slow and lossy (toxiproxy, in process). A Jepsen-style
// checker (testenv.Check) classifies every committed row as lost, delivered
// once or duplicated, counts per-key order violations by first arrival, and
// measures the longest stall in publishing; each scenario prints them and
// fails on a lost, charged or dead row, a stall over 15 s, or an order
// violation.
//
// It needs root and the local-process services, runs only with the build
// tag "partition" (`make partition`, part of `make test`), one scenario at a
// time.
package partition
