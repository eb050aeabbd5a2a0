// Package deploy holds no code: its test checks the deployment files at the
// repository root and in this directory (docker-compose.yml, Dockerfile,
// the Orthanc configuration, Prometheus and Grafana) against the
// configuration variables and metrics the code really has.
package deploy
