package dicomweb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/stowline/stowline/auth"
)

// ConflictRule says which Failure Reason in a STOW-RS answer means "the
// destination already holds this SOP Instance with other content".
// Codes differ by server, and some (0x0110 processing failure, 0xA7xx)
// mean a conflict only in a 409 Conflict answer (Google).
type ConflictRule struct {
	// Code is the Failure Reason; Mask selects the bits compared (0xFF00
	// for "0xA7xx"), 0xFFFF for an exact code.
	Code, Mask int
	// Only409 limits the rule to answers with HTTP status 409.
	Only409 bool
}

// ParseConflictRule reads "45070", "0xB00E", "0x0110@409" or "0xA7xx@409"
// (x: any hex digit).
func ParseConflictRule(s string) (ConflictRule, error) {
	text, on409 := strings.CutSuffix(strings.TrimSpace(s), "@409")
	r := ConflictRule{Only409: on409, Mask: 0xFFFF}
	if hex, ok := strings.CutPrefix(strings.ToLower(text), "0x"); ok && len(hex) == 4 {
		r.Mask = 0
		for _, c := range hex {
			r.Code, r.Mask = r.Code<<4, r.Mask<<4
			if c == 'x' {
				continue
			}
			d, err := strconv.ParseUint(string(c), 16, 8)
			if err != nil {
				return ConflictRule{}, fmt.Errorf("%q: want a Failure Reason such as 45070, 0xB00E, 0xA7xx, optionally with @409", s)
			}
			r.Code |= int(d)
			r.Mask |= 0xF
		}
		return r, zeroConflict(s, r)
	}
	n, err := strconv.ParseUint(text, 10, 16)
	if err != nil {
		return ConflictRule{}, fmt.Errorf("%q: want a Failure Reason such as 45070, 0xB00E, 0xA7xx, optionally with @409", s)
	}
	r.Code = int(n)
	return r, zeroConflict(s, r)
}

// zeroConflict refuses a rule that matches 0, the reason read for a
// failure that gives none ("0xxxxx" matches every one): each failed
// instance would count as stored already, and a study the destination
// refused whole be acknowledged.
func zeroConflict(s string, r ConflictRule) error {
	if r.Code&r.Mask == 0 {
		return fmt.Errorf("%q matches Failure Reason 0, given for a failure without a reason (or every reason): a conflict rule needs a non-zero digit", s)
	}
	return nil
}

// Matches reports whether a Failure Reason in an answer of HTTP status
// status is a conflict by this rule.
func (r ConflictRule) Matches(reason, status int) bool {
	if r.Only409 && status != http.StatusConflict {
		return false
	}
	return reason&r.Mask == r.Code&r.Mask
}

func (r ConflictRule) String() string {
	var b strings.Builder
	if r.Mask == 0xFFFF {
		fmt.Fprintf(&b, "0x%04X", r.Code)
	} else {
		b.WriteString("0x")
		for shift := 12; shift >= 0; shift -= 4 {
			if r.Mask>>shift&0xF == 0 {
				b.WriteByte('x')
			} else {
				fmt.Fprintf(&b, "%X", r.Code>>shift&0xF)
			}
		}
	}
	if r.Only409 {
		b.WriteString("@409")
	}
	return b.String()
}

// NonPrimary reports whether a stored instance's RetrieveURL may point
// into an AWS HealthImaging non-primary image set. HealthImaging stores
// data whose metadata conflicts with a primary image set as a
// non-primary one (devguide, "Understanding image sets"), which DICOMweb
// reaches only with the imageSetId query parameter ("Getting DICOM
// instance metadata from HealthImaging"). But imageSetId is optional for
// primary image sets too, so it is a suspicion only: the forwarder
// confirms it with a search without imageSetId, which sees primary image
// sets only.
func NonPrimary(in Instance) bool {
	u, err := url.Parse(in.RetrieveURL)
	if err != nil || in.RetrieveURL == "" {
		return false
	}
	return u.Query().Get("imageSetId") != ""
}

// DeleteInstance deletes one instance with DICOMweb DELETE
// {base}/studies/{study}/series/{series}/instances/{sop} (Google Cloud
// Healthcare, dcm4chee, Azure v2). A 404 is no error: the instance is
// gone either way.
func (c *Client) DeleteInstance(ctx context.Context, study, series, sop string) error {
	u, err := c.resource(nil, study, "series", series, "instances", sop)
	if err != nil {
		return fmt.Errorf("stow: DELETE: %w", err)
	}
	ctx, cancel := c.bodilessContext(ctx)
	defer cancel()
	var reused, connected atomic.Bool
	ctx = withConnTrace(ctx, &reused, &connected)
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return fmt.Errorf("stow: build DELETE: %w", err)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.doBodiless(req)
	if err != nil && reused.Load() && ctx.Err() == nil && !refusedRedirect(err) && !errors.Is(err, auth.ErrClockSkew) {
		// A kept-alive connection the server closed as the DELETE left:
		// net/http sends only a GET again by itself (or a request with an
		// Idempotency-Key header, which AWS Signature V4 would sign and
		// net/http not send), so the DELETE, idempotent, is sent again
		// here, once, as Store does. A refusal of this host's clock was
		// sent again by doBodiless already.
		resp, err = c.doBodiless(req.Clone(ctx))
	}
	if err != nil {
		if refusedRedirect(err) {
			return fmt.Errorf("%w: stow: DELETE %s/…/instances/%s: %w", ErrRedirected, c.logURL, sop, c.redact(err))
		}
		err = c.redact(err)
		if !connected.Load() {
			err = notConnected(err)
		}
		return noAnswer(fmt.Errorf("stow: DELETE %s/…/instances/%s: %w%s", c.logURL, sop, err, c.gaveUp(ctx)))
	}
	defer resp.Body.Close()
	body, _, _ := readBody(resp.Body, maxErrorBody)
	if r := resp.Request; r != nil && r.Method != http.MethodDelete {
		// A 303 made the client ask again with GET: its answer says
		// nothing of the instance.
		return fmt.Errorf("%w: DELETE %s/…/instances/%s ended as %s %s", ErrRedirected, c.logURL, sop, r.Method, logSafe(r.URL))
	}
	if resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotFound {
		return nil
	}
	return newHTTPError(resp, body)
}
