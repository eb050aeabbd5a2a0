// Package chartcheck checks the Helm chart deploy/helm/stowline without a
// cluster: it renders the chart with Helm's Go module (each values set
// validated against the chart's values.schema.json first, as helm install
// does; schema_test.go checks the schema refuses misspelt and ill-typed
// values and matches values.yaml), decodes every object
// strictly into the Kubernetes API's Go types (and the Prometheus
// Operator's), validates the KEDA ScaledObjects against KEDA's published
// CRD schema (testdata), checks every environment variable against what
// the commands read (their -h; a destination's DESTINATION_<NAME>_*
// against the names DESTINATIONS declares and the destination variables
// of internal/config), runs each rendered Deployment's command with its
// environment to see the configuration load, and lints the chart.
//
// It is a module of its own so that the main module's go.mod and build
// stay free of Helm and Kubernetes dependencies: scripts/test.sh runs it
// with `go -C deploy/helm/chartcheck test ./...`.
package chartcheck
