package chartcheck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	sigsyaml "sigs.k8s.io/yaml"
)

// crdSchema is one version's schema of a CustomResourceDefinition, ready
// to validate objects the way the API server does for a custom resource:
// the OpenAPI schema, unknown fields (which the server would prune
// silently: here they fail) and the x-kubernetes-validations CEL rules.
type crdSchema struct {
	validator  validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

// loadCRD reads the schema of version from a CRD file of testdata.
func loadCRD(t *testing.T, file, version string) *crdSchema {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := sigsyaml.UnmarshalStrict(b, &crd); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name != version || v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
			continue
		}
		var internal apiextensions.JSONSchemaProps
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
			t.Fatalf("%s: convert schema: %v", file, err)
		}
		structural, err := structuralschema.NewStructural(&internal)
		if err != nil {
			t.Fatalf("%s: not a structural schema: %v", file, err)
		}
		validator, _, err := validation.NewSchemaValidator(&internal)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return &crdSchema{
			validator:  validator,
			structural: structural,
			cel:        cel.NewValidator(structural, true, celconfig.PerCallLimit),
		}
	}
	t.Fatalf("%s: no schema for version %s", file, version)
	return nil
}

// validate returns what the API server would refuse in doc, a YAML
// object of the CRD's kind.
func (s *crdSchema) validate(ctx context.Context, doc []byte) (field.ErrorList, error) {
	j, err := sigsyaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	// The API server's JSON decoding: whole numbers become int64.
	var obj map[string]any
	if err := json.Unmarshal(j, &obj); err != nil {
		return nil, err
	}
	errs := validation.ValidateCustomResource(nil, obj, s.validator)
	if s.cel != nil {
		celErrs, _ := s.cel.Validate(ctx, nil, s.structural, obj, nil, celconfig.RuntimeCELCostBudget)
		errs = append(errs, celErrs...)
	}
	// Pruning works on a copy: it removes what the schema does not know.
	var cp map[string]any
	if err := json.Unmarshal(j, &cp); err != nil {
		return nil, err
	}
	for _, path := range pruning.PruneWithOptions(cp, s.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}) {
		errs = append(errs, field.Invalid(field.NewPath(path), nil, fmt.Sprintf("unknown field %q (the API server would drop it)", path)))
	}
	return errs, nil
}

// TestScaledObjectSchemaCatches shows that the schema check refuses what
// KEDA would: a misspelt field, a trigger parameter that is not a string,
// and minReplicaCount above maxReplicaCount (a CEL rule of the CRD).
func TestScaledObjectSchemaCatches(t *testing.T) {
	s := loadCRD(t, "keda.sh_scaledobjects.yaml", "v1alpha1")
	const valid = `
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: x}
spec:
  scaleTargetRef: {name: fwd}
  minReplicaCount: 1
  maxReplicaCount: 3
  triggers:
    - type: nats-jetstream
      metadata: {stream: S, consumer: C, account: "$G", natsServerMonitoringEndpoint: "n:8222", lagThreshold: "10"}
`
	tests := []struct {
		name, doc string
		wantErr   bool
	}{
		{"valid", valid, false},
		{"misspelt field", `
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: x}
spec:
  scaleTargetRef: {name: fwd}
  maxReplicas: 3
  triggers: [{type: nats-jetstream, metadata: {stream: S}}]
`, true},
		{"number as trigger parameter", `
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: x}
spec:
  scaleTargetRef: {name: fwd}
  triggers: [{type: nats-jetstream, metadata: {lagThreshold: 10}}]
`, true},
		{"min above max", `
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: x}
spec:
  scaleTargetRef: {name: fwd}
  minReplicaCount: 5
  maxReplicaCount: 2
  triggers: [{type: nats-jetstream, metadata: {stream: S}}]
`, true},
		{"no triggers", `
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: x}
spec:
  scaleTargetRef: {name: fwd}
`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs, err := s.validate(t.Context(), []byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			if got := len(errs) > 0; got != tt.wantErr {
				t.Errorf("errors %v, want error: %v", errs, tt.wantErr)
			}
		})
	}
}

// TestScaleDownBehavior: with minReplicaCount at least 1, KEDA's
// cooldownPeriod never applies; the HPA it creates scales down, by
// default 300 s after demand fell and any number of replicas at once,
// each stopping forwarder sending its studies back. keda.behavior is its
// advanced.horizontalPodAutoscalerConfig.behavior: one replica a minute
// after five minutes by default, as set, or Kubernetes' own with null.
func TestScaleDownBehavior(t *testing.T) {
	tests := []struct {
		name     string
		behavior any // keda.behavior; nil: the chart's default, "null": null
		want     *autoscalingv2.HPAScalingRules
	}{
		{"default", nil, &autoscalingv2.HPAScalingRules{
			StabilizationWindowSeconds: ptr(int32(300)),
			Policies:                   []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PodsScalingPolicy, Value: 1, PeriodSeconds: 60}},
		}},
		{"set", map[string]any{"scaleDown": map[string]any{
			"stabilizationWindowSeconds": 600,
			"policies":                   []any{map[string]any{"type": "Percent", "value": 10, "periodSeconds": 120}},
		}}, &autoscalingv2.HPAScalingRules{
			StabilizationWindowSeconds: ptr(int32(600)),
			Policies:                   []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PercentScalingPolicy, Value: 10, PeriodSeconds: 120}},
		}},
		{"Kubernetes' defaults", "null", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keda := map[string]any{"enabled": true}
			switch tt.behavior {
			case nil:
			case "null":
				// Helm merges maps: {} would keep the default; null drops it.
				keda["behavior"] = nil
			default:
				keda["behavior"] = tt.behavior
			}
			values := merged(required(), map[string]any{"keda": keda})
			objs := render(t, values)
			// KEDA's CRD schema checks the block too.
			checkRelease(t, objs)
			so := of[*scaledObject](objs)[0]
			var got *autoscalingv2.HPAScalingRules
			if a := so.Spec.Advanced; a != nil && a.HorizontalPodAutoscalerConfig != nil && a.HorizontalPodAutoscalerConfig.Behavior != nil {
				got = a.HorizontalPodAutoscalerConfig.Behavior.ScaleDown
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("scaleDown %+v, want %+v", got, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestNotesWarnWhenKEDAScalesAClosedLane: KEDA's lag counts a consumer's
// pending and unacknowledged studies, so a routine or stat lane outside
// its FORWARD_WINDOWS hours took the group to its ceiling for the whole
// closed time, replicas that may not pull. The chart renders it (the
// replicas are waste, nothing is lost), and the notes say so under the
// group whose env limits such a lane; the low lane has no trigger.
func TestNotesWarnWhenKEDAScalesAClosedLane(t *testing.T) {
	const warning = "KEDA counts the studies waiting\noutside those hours as lag"
	keda := map[string]any{"keda": map[string]any{"enabled": true}}
	windows := func(w string) map[string]any {
		return merged(keda, map[string]any{"forwarderDefaults": map[string]any{"env": map[string]any{"FORWARD_WINDOWS": w, "TZ": "Europe/Paris"}}})
	}
	twoGroups := withDestinations(
		map[string]any{"name": "archive", "destinations": []any{"archive"}, "env": map[string]any{"FORWARD_WINDOWS": "routine=19:00-07:00"}},
		map[string]any{"name": "ai", "destinations": []any{"ai"}})
	tests := []struct {
		name   string
		values map[string]any
		want   map[string]string // group: its warning's lanes; none: no warning
	}{
		{"no windows", keda, nil},
		{"the low lane only", windows("backfill=22:00-07:00, low=12:00-13:00"), nil},
		{"the routine lane", windows("routine=19:00-07:00"), map[string]string{"default": "their routine lane to hours"}},
		{"stat and routine", windows(" low=22:00-07:00,routine=19:00-23:00, stat=08:00-18:00,routine=00:00-07:00"),
			map[string]string{"default": "their stat and routine lanes to hours"}},
		{"without KEDA", merged(windows("routine=19:00-07:00"), map[string]any{"keda": map[string]any{"enabled": false}}), nil},
		{"one group of two", merged(twoGroups, keda), map[string]string{"archive": "their routine lane to hours"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := merged(required(), tt.values)
			if _, ok := tt.values["destinations"]; ok {
				values = tt.values
			}
			notes := renderNotes(t, values)
			if strings.Count(notes, warning) != len(tt.want) {
				t.Errorf("notes warn %d times, want %d (%v):\n%s", strings.Count(notes, warning), len(tt.want), tt.want, notes)
			}
			for group, lanes := range tt.want {
				// The group's paragraph of the notes.
				_, para, _ := strings.Cut(notes, "\nForwarders \""+group+"\"")
				para, _, _ = strings.Cut(para, "\n\n")
				if !strings.Contains(para, lanes) || !strings.Contains(para, warning) || !strings.Contains(para, "keda.maxReplicaCount") {
					t.Errorf("group %s's notes, want %q in a warning:\n%s", group, lanes, para)
				}
			}
		})
	}
}
