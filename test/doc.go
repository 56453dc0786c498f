// Package test holds the end-to-end suites: they build the relay binary and
// drive real `relay` processes against real PostgreSQL and RabbitMQ.
package test
