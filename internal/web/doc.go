// Package web is everything stowline serves over HTTP: the webhook
// (webhook.go, with its HMAC and rate limit), the status page
// (statuspage.go), the forwarder's admin API for dead letters (admin.go),
// /healthz, /readyz and /metrics (health.go), and what every listener
// shares: servers with timeouts and graceful shutdown (their certificates,
// reloaded when renewed, come from internal/keypair). internal/app mounts
// each part on the listener of its role.
package web
