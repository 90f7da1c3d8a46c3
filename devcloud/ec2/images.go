package ec2

import (
	"regexp"
	"slices"
	"time"
)

// image is a registered AMI; guarded by Server.mu.
type image struct {
	seq                         int64
	id, name, description       string
	state                       string // pending, available, deregistered
	pendingDescribes            int
	architecture, bootMode      string
	imdsSupport, rootDeviceName string
	virtualization, tpmSupport  string
	enaSupport                  bool
	bdms                        []imageBDM
	tags                        []Tag
	created                     time.Time
}

// imageBDM is a block device of an image or a launch: a device name and an EBS volume.
type imageBDM struct {
	DeviceName          string
	SnapshotID          string
	VolumeSize          int // GiB
	VolumeType          string
	DeleteOnTermination bool
}

// amiName is EC2's rule for AMI names: 3-128 characters of letters, digits, ( ) [ ] space . / - ' @ _.
var amiName = regexp.MustCompile(`^[a-zA-Z0-9()\[\] ./\-'@_]{3,128}$`)

// readBDMs parses BlockDeviceMapping.N members; each snapshot named must exist and, for an image, be completed,
// and a volume may not be smaller than its snapshot.
func (s *Server) readBDMs(q params, forImage bool) ([]imageBDM, []string, error) {
	var out []imageBDM
	var noDevice []string
	for _, m := range q.indexed("BlockDeviceMapping") {
		b := imageBDM{DeviceName: m.str("DeviceName"), SnapshotID: m.str("Ebs.SnapshotId"), VolumeType: m.str("Ebs.VolumeType"), DeleteOnTermination: true}
		if b.DeviceName == "" {
			return nil, nil, errCode("MissingParameter", "The request must contain the parameter BlockDeviceMapping.DeviceName")
		}
		if m.has("NoDevice") {
			noDevice = append(noDevice, b.DeviceName)
			continue
		}
		if m.has("Ebs.DeleteOnTermination") {
			v, err := m.boolean("Ebs.DeleteOnTermination")
			if err != nil {
				return nil, nil, err
			}
			b.DeleteOnTermination = v
		}
		size, err := m.integer("Ebs.VolumeSize", 0)
		if err != nil {
			return nil, nil, err
		}
		if b.VolumeType == "" {
			b.VolumeType = "gp3"
		}
		if b.SnapshotID != "" {
			s.mu.Lock()
			sn, ok := s.snapshots[b.SnapshotID]
			var st string
			var snapSize int
			if ok {
				sn.settle(s.opts.Now())
				st, snapSize = sn.ebsStatus(), int(sn.volumeSize)
			}
			s.mu.Unlock()
			if !ok {
				return nil, nil, notFound(b.SnapshotID)
			}
			if forImage && st != "completed" {
				return nil, nil, errCode("IncorrectState", "Snapshot '%s' is not in the completed state (it is %s).", b.SnapshotID, st)
			}
			if size == 0 {
				size = snapSize
			}
			if size < snapSize {
				return nil, nil, errInvalid("Volume of size %dGB is smaller than snapshot '%s', expect size >= %dGB", size, b.SnapshotID, snapSize)
			}
		} else if size == 0 && forImage {
			return nil, nil, errCode("MissingParameter", "The request must contain the parameter size or snapshotId for %s", b.DeviceName)
		}
		b.VolumeSize = size
		out = append(out, b)
	}
	return out, noDevice, nil
}

// settle makes a pending image available once its pending describes are used up.
func (im *image) settle() {
	if im.state == "pending" && im.pendingDescribes == 0 {
		im.state = "available"
	}
}

// launchableImage returns a registered image that can be launched now.
func (s *Server) launchableImage(id string) (*image, error) {
	if id == "" {
		return nil, errCode("MissingParameter", "The request must contain the parameter ImageId")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	im, ok := s.images[id]
	if !ok || im.state == "deregistered" {
		return nil, notFound(id)
	}
	im.settle()
	if im.state != "available" {
		return nil, errCode("InvalidAMIID.Unavailable", "The image '%s' is %s and cannot be launched yet.", id, im.state)
	}
	c := *im
	return &c, nil
}

// launchDisks is the image's block devices with the launch's overrides applied (NoDevice drops one).
func (s *Server) launchDisks(q params, im *image) ([]imageBDM, error) {
	over, noDevice, err := s.readBDMs(q, false)
	if err != nil {
		return nil, err
	}
	out := slices.DeleteFunc(slices.Clone(im.bdms), func(b imageBDM) bool { return slices.Contains(noDevice, b.DeviceName) })
	for _, o := range over {
		i := slices.IndexFunc(out, func(b imageBDM) bool { return b.DeviceName == o.DeviceName })
		if i < 0 {
			if o.VolumeSize == 0 {
				return nil, errCode("MissingParameter", "The request must contain the parameter size or snapshotId for %s", o.DeviceName)
			}
			out = append(out, o)
			continue
		}
		if o.SnapshotID == "" {
			o.SnapshotID = out[i].SnapshotID
		}
		if o.VolumeSize == 0 {
			o.VolumeSize = out[i].VolumeSize
		}
		if o.VolumeSize < out[i].VolumeSize {
			return nil, errInvalid("Volume of size %dGB is smaller than snapshot '%s', expect size >= %dGB", o.VolumeSize, out[i].SnapshotID, out[i].VolumeSize)
		}
		out[i] = o
	}
	return out, nil
}

type registerImageResponse struct {
	reply
	ImageID string `xml:"imageId"`
}

// registerImage registers an EBS-backed image from completed snapshots; it is pending for
// Options.ImagePendingDescribes DescribeImages calls, then available.
func (s *Server) registerImage(q params) (any, error) {
	name := q.str("Name")
	if name == "" {
		return nil, errCode("MissingParameter", "The request must contain the parameter name")
	}
	if !amiName.MatchString(name) {
		return nil, errInvalid("AMI names must be between 3 and 128 characters long, and may contain letters, numbers, '(', ')', '.', '-', '/' and '_'")
	}
	if q.str("ImageLocation") != "" {
		return nil, errCode("UnsupportedOperation", "Instance-store images (ImageLocation) are not supported.")
	}
	im := &image{name: name, description: q.str("Description"), architecture: q.str("Architecture"), bootMode: q.str("BootMode"),
		imdsSupport: q.str("ImdsSupport"), rootDeviceName: q.str("RootDeviceName"), virtualization: q.str("VirtualizationType"),
		tpmSupport: q.str("TpmSupport"), created: s.opts.Now()}
	if im.architecture == "" {
		im.architecture = "x86_64" // EC2 defaults to i386; nothing here runs i386
	}
	if !slices.Contains([]string{"x86_64", "arm64", "i386", "x86_64_mac", "arm64_mac"}, im.architecture) {
		return nil, errInvalid("Value (%s) for parameter architecture is invalid.", im.architecture)
	}
	if im.bootMode != "" && !slices.Contains([]string{"legacy-bios", "uefi", "uefi-preferred"}, im.bootMode) {
		return nil, errInvalid("Value (%s) for parameter BootMode is invalid.", im.bootMode)
	}
	if im.imdsSupport != "" && im.imdsSupport != "v2.0" {
		return nil, errInvalid("Value (%s) for parameter ImdsSupport is invalid.", im.imdsSupport)
	}
	if im.virtualization == "" {
		im.virtualization = "hvm"
	}
	ena, err := q.boolean("EnaSupport")
	if err != nil {
		return nil, err
	}
	im.enaSupport = ena
	bdms, _, err := s.readBDMs(q, true)
	if err != nil {
		return nil, err
	}
	if im.rootDeviceName == "" {
		return nil, errCode("MissingParameter", "The request must contain the parameter rootDeviceName")
	}
	if !slices.ContainsFunc(bdms, func(b imageBDM) bool { return b.DeviceName == im.rootDeviceName && b.SnapshotID != "" }) {
		return nil, errCode("InvalidBlockDeviceMapping", "The root device name '%s' has no block device mapping with a snapshot.", im.rootDeviceName)
	}
	im.bdms = bdms
	specs, err := q.tagSpecs("image")
	if err != nil {
		return nil, err
	}
	im.tags = specs["image"]

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, other := range s.images {
		if other.name == name && other.state != "deregistered" {
			return nil, errCode("InvalidAMIName.Duplicate", "AMI name %s is already in use by AMI %s", name, other.id)
		}
	}
	s.seq++
	im.seq, im.id = s.seq, newID("ami")
	im.state, im.pendingDescribes = "available", s.opts.ImagePendingDescribes
	if im.pendingDescribes > 0 {
		im.state = "pending"
	}
	s.images[im.id] = im
	return &registerImageResponse{ImageID: im.id}, nil
}

type imageBDMXML struct {
	DeviceName string `xml:"deviceName"`
	Ebs        struct {
		SnapshotID          string `xml:"snapshotId,omitempty"`
		VolumeSize          int    `xml:"volumeSize"`
		DeleteOnTermination bool   `xml:"deleteOnTermination"`
		VolumeType          string `xml:"volumeType"`
		Encrypted           bool   `xml:"encrypted"`
	} `xml:"ebs"`
}

type imageXML struct {
	ImageID        string        `xml:"imageId"`
	ImageLocation  string        `xml:"imageLocation"`
	State          string        `xml:"imageState"`
	OwnerID        string        `xml:"imageOwnerId"`
	CreationDate   string        `xml:"creationDate"`
	IsPublic       bool          `xml:"isPublic"`
	Architecture   string        `xml:"architecture"`
	ImageType      string        `xml:"imageType"`
	Name           string        `xml:"name"`
	Description    string        `xml:"description,omitempty"`
	RootDeviceType string        `xml:"rootDeviceType"`
	RootDeviceName string        `xml:"rootDeviceName"`
	BDMs           []imageBDMXML `xml:"blockDeviceMapping>item"`
	Virtualization string        `xml:"virtualizationType"`
	Tags           []Tag         `xml:"tagSet>item"`
	Hypervisor     string        `xml:"hypervisor"`
	EnaSupport     bool          `xml:"enaSupport"`
	BootMode       string        `xml:"bootMode,omitempty"`
	ImdsSupport    string        `xml:"imdsSupport,omitempty"`
	TpmSupport     string        `xml:"tpmSupport,omitempty"`
	Platform       string        `xml:"platformDetails"`
	UsageOperation string        `xml:"usageOperation"`
}

func (s *Server) imageXMLLocked(im *image, state string) imageXML {
	x := imageXML{ImageID: im.id, ImageLocation: s.opts.AccountID + "/" + im.name, State: state, OwnerID: s.opts.AccountID,
		CreationDate: awsTime(im.created), Architecture: im.architecture, ImageType: "machine", Name: im.name,
		Description: im.description, RootDeviceType: "ebs", RootDeviceName: im.rootDeviceName, Virtualization: im.virtualization,
		Tags: slices.Clone(im.tags), Hypervisor: "xen", EnaSupport: im.enaSupport, BootMode: im.bootMode,
		ImdsSupport: im.imdsSupport, TpmSupport: im.tpmSupport, Platform: "Linux/UNIX", UsageOperation: "RunInstances"}
	for _, b := range im.bdms {
		bx := imageBDMXML{DeviceName: b.DeviceName}
		bx.Ebs.SnapshotID, bx.Ebs.VolumeSize, bx.Ebs.DeleteOnTermination, bx.Ebs.VolumeType = b.SnapshotID, b.VolumeSize, b.DeleteOnTermination, b.VolumeType
		x.BDMs = append(x.BDMs, bx)
	}
	return x
}

type describeImagesResponse struct {
	reply
	Images    []imageXML `xml:"imagesSet>item"`
	NextToken string     `xml:"nextToken,omitempty"`
}

// describeImages lists this account's images (Owners self or the account ID; any other owner has none here).
// Every call counts down the pending images' Options.ImagePendingDescribes.
func (s *Server) describeImages(q params) (any, error) {
	fs, err := q.filters("name", "state", "image-id", "architecture", "owner-id", "block-device-mapping.snapshot-id",
		"root-device-name", "boot-mode", "description")
	if err != nil {
		return nil, err
	}
	ids := q.list("ImageId")
	if len(ids) > 0 && q.has("MaxResults") {
		return nil, errCode("InvalidParameterCombination", "The parameter ImageIds cannot be used with the parameter maxResults")
	}
	owners := q.list("Owner")
	mine := len(owners) == 0 || slices.ContainsFunc(owners, func(o string) bool { return o == "self" || o == s.opts.AccountID })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if im, ok := s.images[id]; !ok || im.state == "deregistered" {
			return nil, notFound(id)
		}
	}
	var match []*image
	states := map[string]string{}
	for _, im := range s.images {
		if !mine || im.state == "deregistered" || (len(ids) > 0 && !slices.Contains(ids, im.id)) {
			continue
		}
		im.settle()
		state := im.state
		if im.pendingDescribes > 0 {
			im.pendingDescribes--
		}
		states[im.id] = state
		if matchAll(fs, im.tags, func(name string) []string {
			switch name {
			case "name":
				return []string{im.name}
			case "state":
				return []string{state}
			case "image-id":
				return []string{im.id}
			case "architecture":
				return []string{im.architecture}
			case "owner-id":
				return []string{s.opts.AccountID}
			case "root-device-name":
				return []string{im.rootDeviceName}
			case "boot-mode":
				return []string{im.bootMode}
			case "description":
				return []string{im.description}
			case "block-device-mapping.snapshot-id":
				var v []string
				for _, b := range im.bdms {
					v = append(v, b.SnapshotID)
				}
				return v
			}
			return nil
		}) {
			match = append(match, im)
		}
	}
	slices.SortFunc(match, func(a, b *image) int { return int(a.seq - b.seq) })
	got, next, err := page(q, match, func(im *image) int64 { return im.seq }, 5, 1000)
	if err != nil {
		return nil, err
	}
	out := &describeImagesResponse{NextToken: next}
	for _, im := range got {
		out.Images = append(out.Images, s.imageXMLLocked(im, states[im.id]))
	}
	return out, nil
}

type deregisterResponse struct {
	reply
	Return  bool                `xml:"return"`
	Deleted []deleteSnapshotXML `xml:"deleteSnapshotResultSet>item"`
}

type deleteSnapshotXML struct {
	SnapshotID string `xml:"snapshotId"`
	ReturnCode string `xml:"returnCode"`
}

// deregisterImage deregisters an image, deleting its snapshots too when DeleteAssociatedSnapshots is set.
func (s *Server) deregisterImage(q params) (any, error) {
	id := q.str("ImageId")
	del, err := q.boolean("DeleteAssociatedSnapshots")
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	im, ok := s.images[id]
	if !ok || im.state == "deregistered" {
		s.mu.Unlock()
		return nil, notFound(id)
	}
	im.state = "deregistered"
	bdms := slices.Clone(im.bdms)
	s.mu.Unlock()
	out := &deregisterResponse{Return: true}
	if del {
		for _, b := range bdms {
			if b.SnapshotID == "" {
				continue
			}
			code := "success"
			if err := s.removeSnapshot(b.SnapshotID); err != nil {
				code = "error"
				if ae, ok := err.(*apiError); ok {
					code = ae.Code
				}
			}
			out.Deleted = append(out.Deleted, deleteSnapshotXML{b.SnapshotID, code})
		}
	}
	return out, nil
}
