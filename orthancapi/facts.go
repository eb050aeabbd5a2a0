package orthancapi

import (
	"context"
	"strings"
)

// StudyFacts is what routing rules read about a study: main DICOM tags
// of the study and its series, none of them patient identity.
type StudyFacts struct {
	Description string
	Institution string
	// ModalitiesInStudy is the study's tag, empty when Orthanc does not
	// keep it as a main tag (the series' Modality tells then).
	ModalitiesInStudy []string
	// Series by Orthanc series ID.
	Series map[string]SeriesFacts
}

// SeriesFacts is what routing rules read about a series.
type SeriesFacts struct {
	Modality, Description string
}

// StudyFacts returns the facts of a study, in two requests.
func (c *Client) StudyFacts(ctx context.Context, studyID string) (StudyFacts, error) {
	if err := checkID("study", studyID); err != nil {
		return StudyFacts{}, err
	}
	var study struct {
		MainDicomTags struct{ StudyDescription, InstitutionName, ModalitiesInStudy string }
	}
	if err := c.getJSON(ctx, c.endpoint("studies", studyID), &study); err != nil {
		return StudyFacts{}, err
	}
	var series []struct {
		ID            string
		MainDicomTags struct{ Modality, SeriesDescription string }
	}
	if err := c.getJSON(ctx, c.endpoint("studies", studyID, "series"), &series); err != nil {
		return StudyFacts{}, err
	}
	f := StudyFacts{
		Description: study.MainDicomTags.StudyDescription,
		Institution: study.MainDicomTags.InstitutionName,
		Series:      make(map[string]SeriesFacts, len(series)),
	}
	if m := study.MainDicomTags.ModalitiesInStudy; m != "" {
		f.ModalitiesInStudy = strings.Split(m, `\`)
	}
	for _, s := range series {
		f.Series[s.ID] = SeriesFacts{Modality: s.MainDicomTags.Modality, Description: s.MainDicomTags.SeriesDescription}
	}
	return f, nil
}

// InstanceMetadata is what Orthanc recorded when it received an instance.
type InstanceMetadata struct {
	// RemoteAET is the AE title that sent it by DICOM (empty otherwise).
	RemoteAET         string
	SOPClassUID       string
	TransferSyntaxUID string
	// ReceptionDate is when Orthanc stored it, in the form and clock of a
	// study's LastUpdate ("20240131T104501"), which it sets to the same
	// second.
	ReceptionDate string
}

// InstanceMetadata returns an instance's metadata in one request.
func (c *Client) InstanceMetadata(ctx context.Context, instanceID string) (InstanceMetadata, error) {
	if err := checkID("instance", instanceID); err != nil {
		return InstanceMetadata{}, err
	}
	u := c.endpoint("instances", instanceID, "metadata")
	u.RawQuery = "expand"
	var m map[string]string
	if err := c.getJSON(ctx, u, &m); err != nil {
		return InstanceMetadata{}, err
	}
	return InstanceMetadata{RemoteAET: m["RemoteAET"], SOPClassUID: m["SopClassUid"], TransferSyntaxUID: m["TransferSyntax"], ReceptionDate: m["ReceptionDate"]}, nil
}
