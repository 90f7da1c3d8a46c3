package ec2

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// apiVersion is the EC2 API version the SDK speaks; a Query request with another Version (ELBv2, IAM, STS...) is
// not EC2's and goes to the fallback.
const apiVersion = "2016-11-15"

// xmlns is the namespace of every EC2 response document.
const xmlns = "http://ec2.amazonaws.com/doc/2016-11-15/"

// maxQueryBody bounds an EC2 request's body: the largest thing in one is UserData (16 KiB before base64).
const maxQueryBody = 1 << 20

// Options configures a Server. The zero value is a working server: the default instance-type fixture, one default
// VPC subnet and security group, no fallback, instances that only change state, blocks kept in memory.
type Options struct {
	// AccountID owns every resource (Owners=self); default "123456789012".
	AccountID string
	// Region names the region in ARNs and availability zones; default "us-east-1".
	Region string
	// Subnets and SecurityGroups are the network fixtures; nil means DefaultSubnets() / DefaultSecurityGroups().
	// Subnets and groups not listed here are looked up in Fallback (kumo's VPC resources).
	Subnets        []Subnet
	SecurityGroups []SecurityGroup
	// InstanceTypes is the DescribeInstanceTypes fixture; nil means DefaultInstanceTypes().
	InstanceTypes []InstanceType
	// Fallback serves what this server does not: other services and the EC2 actions in passThrough (VPCs,
	// subnets, security groups), e.g. httputil.NewSingleHostReverseProxy to a kumo.NewServer()'s URL. Nil:
	// those answer InvalidAction / 404.
	Fallback http.Handler
	// Runner is what an instance is; nil means instances only change state.
	Runner Runner
	// BlockDir, when set, holds each snapshot's blocks in a sparse file <BlockDir>/<snapshot-id>.img (the
	// directory is made when missing); otherwise blocks are kept in memory.
	BlockDir string
	// SnapshotPendingDescribes is how many DescribeSnapshots calls still see a snapshot pending after
	// CompleteSnapshot (EC2 takes a while to complete a snapshot); 0 completes it at once.
	SnapshotPendingDescribes int
	// ImagePendingDescribes is how many DescribeImages calls still see a new image pending.
	ImagePendingDescribes int
	// TerminatedRetention is how long terminated instances stay listed; default one hour, as EC2.
	TerminatedRetention time.Duration
	// TransitionDelay delays every state transition (pending → running, shutting-down → terminated).
	TransitionDelay time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Server is the EC2 and EBS-direct endpoint; it is an http.Handler, safe for concurrent use.
type Server struct {
	opts     Options
	runner   Runner
	ebs      *http.ServeMux
	subnets  map[string]Subnet
	groups   map[string]SecurityGroup
	types    map[string]InstanceType
	typeList []InstanceType

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every instance state change
	seq       int64         // orders resources for stable paging
	instances map[string]*instance
	runTokens map[string]*runRecord
	usedIPs   map[string]map[string]bool // subnet ID → private IPs in use
	images    map[string]*image
	snapshots map[string]*snapshot
	snapTok   map[string]*snapshot // StartSnapshot ClientToken → snapshot
	faults    faults
	calls     map[string]int
}

// New returns a Server configured by opts.
func New(opts Options) *Server {
	if opts.AccountID == "" {
		opts.AccountID = "123456789012"
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.Subnets == nil {
		opts.Subnets = DefaultSubnets()
	}
	if opts.SecurityGroups == nil {
		opts.SecurityGroups = DefaultSecurityGroups()
	}
	if opts.InstanceTypes == nil {
		opts.InstanceTypes = DefaultInstanceTypes()
	}
	if opts.TerminatedRetention == 0 {
		opts.TerminatedRetention = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		opts:      opts,
		runner:    opts.Runner,
		subnets:   map[string]Subnet{},
		groups:    map[string]SecurityGroup{},
		types:     map[string]InstanceType{},
		typeList:  opts.InstanceTypes,
		changed:   make(chan struct{}),
		instances: map[string]*instance{},
		runTokens: map[string]*runRecord{},
		usedIPs:   map[string]map[string]bool{},
		images:    map[string]*image{},
		snapshots: map[string]*snapshot{},
		snapTok:   map[string]*snapshot{},
		faults:    newFaults(),
		calls:     map[string]int{},
	}
	if s.runner == nil {
		s.runner = nopRunner{}
	}
	for _, n := range opts.Subnets {
		s.subnets[n.ID] = n
	}
	for _, g := range opts.SecurityGroups {
		s.groups[g.ID] = g
	}
	for _, t := range opts.InstanceTypes {
		s.types[t.Name] = t
	}
	s.ebs = s.ebsMux()
	return s
}

// handler answers one EC2 action; it returns the response document or an *apiError.
type handler func(s *Server, q params) (any, error)

// actions are the EC2 actions this server answers itself.
var actions = map[string]handler{
	"RunInstances":                  (*Server).runInstances,
	"DescribeInstances":             (*Server).describeInstances,
	"TerminateInstances":            (*Server).terminateInstances,
	"GetConsoleOutput":              (*Server).getConsoleOutput,
	"ModifyInstanceMetadataOptions": (*Server).modifyInstanceMetadataOptions,
	"CreateTags":                    (*Server).createTags,
	"DeleteTags":                    (*Server).deleteTags,
	"DescribeTags":                  (*Server).describeTags,
	"DescribeInstanceTypes":         (*Server).describeInstanceTypes,
	"DescribeSubnets":               (*Server).describeSubnets,
	"DescribeSecurityGroups":        (*Server).describeSecurityGroups,
	"RegisterImage":                 (*Server).registerImage,
	"DescribeImages":                (*Server).describeImages,
	"DeregisterImage":               (*Server).deregisterImage,
	"DescribeSnapshots":             (*Server).describeSnapshots,
	"DeleteSnapshot":                (*Server).deleteSnapshot,
}

// passThrough are the EC2 actions given to the fallback as they are: the VPC resources kumo models well enough.
var passThrough = map[string]bool{
	"CreateVpc": true, "DeleteVpc": true, "DescribeVpcs": true, "ModifyVpcAttribute": true,
	"CreateSubnet": true, "DeleteSubnet": true, "ModifySubnetAttribute": true,
	"CreateSecurityGroup": true, "DeleteSecurityGroup": true,
	"AuthorizeSecurityGroupIngress": true, "AuthorizeSecurityGroupEgress": true,
	"RevokeSecurityGroupIngress": true, "RevokeSecurityGroupEgress": true,
	"CreateInternetGateway": true, "AttachInternetGateway": true, "DetachInternetGateway": true,
	"DeleteInternetGateway": true, "DescribeInternetGateways": true,
	"CreateRouteTable": true, "CreateRoute": true, "AssociateRouteTable": true, "DescribeRouteTables": true,
}

// ServeHTTP routes EBS-direct paths, then EC2 Query requests, then everything else to the fallback.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/snapshots" || strings.HasPrefix(r.URL.Path, "/snapshots/") {
		s.ebs.ServeHTTP(w, r)
		return
	}
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		s.fallback(w, r, "")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxQueryBody+1))
	if err != nil || len(body) > maxQueryBody {
		writeError(w, &apiError{status: http.StatusBadRequest, Code: "InvalidParameterValue", Message: "reading the request body failed or it is too large"})
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		writeError(w, errInvalid("the request body is not a valid query string: %v", err))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	action := form.Get("Action")
	if form.Get("Version") != apiVersion {
		s.fallback(w, r, action)
		return
	}
	h, ok := actions[action]
	if !ok {
		if passThrough[action] && s.opts.Fallback != nil {
			s.fallback(w, r, action)
			return
		}
		s.count(action)
		writeError(w, &apiError{status: http.StatusBadRequest, Code: "InvalidAction",
			Message: fmt.Sprintf("The action %s is not valid for this web service.", action)})
		return
	}
	s.count(action)
	if err := s.faults.before(action); err != nil {
		writeError(w, err)
		return
	}
	q := params(form)
	if dry, _ := q.boolean("DryRun"); dry {
		writeError(w, &apiError{status: http.StatusPreconditionFailed, Code: "DryRunOperation",
			Message: "Request would have succeeded, but DryRun flag is set."})
		return
	}
	out, err := h(s, q)
	if err != nil {
		writeError(w, err)
		return
	}
	writeXML(w, action, out)
}

// fallback hands r to Options.Fallback, counting the call.
func (s *Server) fallback(w http.ResponseWriter, r *http.Request, action string) {
	if action != "" {
		s.count(action)
	}
	if s.opts.Fallback == nil {
		http.NotFound(w, r)
		return
	}
	s.opts.Fallback.ServeHTTP(w, r)
}

// count records one call of action.
func (s *Server) count(action string) {
	s.mu.Lock()
	s.calls[action]++
	s.mu.Unlock()
}

// Calls returns how many calls of action this server received (EC2 actions, EBS operations such as
// "PutSnapshotBlock", and EC2 actions handed to the fallback), SDK retries included.
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// CallCounts returns a copy of all call counts by action.
func (s *Server) CallCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		m[k] = v
	}
	return m
}

// ResetCalls zeroes the call counts (e.g. before the sync a test measures).
func (s *Server) ResetCalls() {
	s.mu.Lock()
	s.calls = map[string]int{}
	s.mu.Unlock()
}

// apiError is an EC2 error response: an HTTP status and EC2's code and message.
type apiError struct {
	status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// errInvalid is EC2's InvalidParameterValue.
func errInvalid(format string, a ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: "InvalidParameterValue", Message: fmt.Sprintf(format, a...)}
}

// errCode is a client error (HTTP 400) with the given code.
func errCode(code, format string, a ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: code, Message: fmt.Sprintf(format, a...)}
}

// writeError writes err as EC2 does: <Response><Errors><Error>…</Error></Errors><RequestID>…</RequestID></Response>.
func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusInternalServerError, Code: "InternalError", Message: err.Error()}
	}
	doc := struct {
		XMLName   xml.Name `xml:"Response"`
		Code      string   `xml:"Errors>Error>Code"`
		Message   string   `xml:"Errors>Error>Message"`
		RequestID string   `xml:"RequestID"`
	}{Code: ae.Code, Message: ae.Message, RequestID: newRequestID()}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(ae.status)
	_, _ = io.WriteString(w, xml.Header)
	_ = xml.NewEncoder(w).Encode(doc)
}

// reply is embedded first in every response document: EC2 answers each request with its ID.
type reply struct {
	RequestID string `xml:"requestId"`
}

func (r *reply) setRequestID(id string) { r.RequestID = id }

// writeXML writes doc as the <ActionResponse xmlns=…> document the SDK's ec2query deserializers read.
func writeXML(w http.ResponseWriter, action string, doc any) {
	if d, ok := doc.(interface{ setRequestID(string) }); ok {
		d.setRequestID(newRequestID())
	}
	var buf bytes.Buffer
	buf.WriteString(xml.Header)
	start := xml.StartElement{Name: xml.Name{Local: action + "Response"}, Attr: []xml.Attr{{Name: xml.Name{Local: "xmlns"}, Value: xmlns}}}
	if err := xml.NewEncoder(&buf).EncodeElement(doc, start); err != nil {
		writeError(w, fmt.Errorf("encoding %s response, %w", action, err))
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	_, _ = w.Write(buf.Bytes())
}

// newID returns an AWS-shaped resource ID: prefix, a dash, 17 hex digits.
func newID(prefix string) string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])[:17]
}

// newRequestID returns a UUID-shaped request ID.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// awsTime formats t as EC2 does in XML.
func awsTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }
