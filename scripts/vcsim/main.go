// A vCenter simulator for Tern's vSphere tests: govmomi's simulator (vcsim) with one datacenter,
// one cluster of one host, one local datastore and two VMs, serving HTTPS with a certificate
// signed by a CA of its own (written to DIR/ca.pem), so the connector's certificate checking is
// tested as a user would configure it.
//
// Built offline from Debian's golang-go and golang-github-vmware-govmomi-dev by scripts/vcsim.sh.
// On start it prints one JSON line: {"url": ..., "datastores": {name: local directory}}.
//
// Two things vcsim lacks are added in front of it (see cbt below): changed block tracking
// (`-cbt`: QueryChangedDiskAreas answered from copies of each disk taken at every snapshot), and
// a vCenter that refuses a VM's snapshots (while the file DIR/refuse-snapshot-<vm id> exists);
// and DIR/served, the bytes served to ranged datastore reads so far.
package main

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "vcsim:", err)
	os.Exit(1)
}

// certificates makes a CA and a server certificate for 127.0.0.1 and localhost signed by it.
func certificates(dir string) tls.Certificate {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail(err)
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tern vcsim test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		fail(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		fail(err)
	}
	pemCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pemCA, 0o644); err != nil {
		fail(err)
	}
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

func main() {
	listen := flag.String("l", "127.0.0.1:0", "address to listen on")
	dir := flag.String("dir", ".", "where to write ca.pem")
	user := flag.String("user", "tern", "the only user name accepted")
	pass := flag.String("pass", "tern-secret", "its password")
	vms := flag.Int("vms", 2, "VMs in the cluster")
	diskMB := flag.Int64("disk-mb", 32, "capacity of each VM's disk, MiB")
	tracking := flag.Bool("cbt", false, "turn changed block tracking on for every VM")
	flag.Parse()

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = 1
	model.Host = 0
	model.Machine = *vms
	model.Datastore = 1
	model.Portgroup = 1
	if err := model.Create(); err != nil {
		fail(err)
	}
	// The model's disks are 1 MiB; give them the capacity asked for.
	for _, ref := range simulator.Map.All("VirtualMachine") {
		vm := simulator.Map.Get(ref.Reference()).(*simulator.VirtualMachine)
		for _, d := range vm.Config.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok {
				disk.CapacityInKB = *diskMB * 1024
				disk.CapacityInBytes = *diskMB << 20
			}
		}
		if *tracking {
			vm.Config.ChangeTrackingEnabled = types.NewBool(true)
		}
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{certificates(*dir)}}
	s := model.Service.NewServer()

	stores := map[string]string{}
	for _, ref := range simulator.Map.All("Datastore") {
		ds := simulator.Map.Get(ref.Reference()).(*simulator.Datastore)
		stores[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
	// Set before the first request: the server reads its handler per request.
	c := &cbt{dir: *dir, stores: stores, copies: map[string]string{}}
	s.Config.Handler = c.wrap(s.Config.Handler)
	u := *s.URL
	u.User = nil
	line, _ := json.Marshal(map[string]interface{}{"url": u.String(), "datastores": stores})
	fmt.Println(string(line))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	s.Close()
	model.Remove()
}

// cbt stands in for vSphere's changed block tracking: each snapshot of a VM with tracking on
// gives its disks a new change id and keeps a copy of each disk's flat extent as of that id;
// QueryChangedDiskAreas compares the snapshot's flat extent with the copy of the change id
// asked for, in 64 KiB areas ("*": every area holding data). A copy removed from DIR (a
// tracking reset) makes its change id invalid, as on vSphere.
type cbt struct {
	dir    string
	stores map[string]string
	mu     sync.Mutex
	seq    int
	copies map[string]string
	// Bytes served to ranged datastore reads, for tests to see what a run read (DIR/served).
	served int64
}

type counting struct {
	http.ResponseWriter
	n *int64
	mu *sync.Mutex
}

func (c counting) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.mu.Lock()
	*c.n += int64(n)
	c.mu.Unlock()
	return n, err
}

const area = 64 << 10

// element returns the text of the first <name ...>text</name> in a request.
func element(body []byte, name string) string {
	s := string(body)
	i := strings.Index(s, "<"+name)
	if i < 0 {
		return ""
	}
	j := strings.Index(s[i:], ">")
	k := strings.Index(s[i:], "</"+name+">")
	if j < 0 || k < 0 || k < j {
		return ""
	}
	return strings.TrimSpace(s[i+j+1 : i+k])
}

func fault(w http.ResponseWriter, kind, message string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s"></%sFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`, message, kind, kind, kind)
}

func (c *cbt) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/folder/") && r.Header.Get("Range") != "" {
			next.ServeHTTP(counting{w, &c.served, &c.mu}, r)
			c.mu.Lock()
			tmp := filepath.Join(c.dir, "served.tmp")
			if os.WriteFile(tmp, []byte(strconv.FormatInt(c.served, 10)), 0o644) == nil {
				_ = os.Rename(tmp, filepath.Join(c.dir, "served"))
			}
			c.mu.Unlock()
			return
		}
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		switch {
		case bytes.Contains(body, []byte("<QueryChangedDiskAreas")):
			c.query(w, body)
		case bytes.Contains(body, []byte("<CreateSnapshot_Task")):
			vm := element(body, "_this")
			if _, err := os.Stat(filepath.Join(c.dir, "refuse-snapshot-"+vm)); err == nil {
				fault(w, "SnapshotDisabled", "Snapshots are disabled for this virtual machine by its administrator")
				return
			}
			next.ServeHTTP(w, r)
			c.snapshotTaken(vm)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// flat is the local file of a disk's flat extent.
func (c *cbt) flat(b *types.VirtualDiskFlatVer2BackingInfo) string {
	name := strings.TrimPrefix(b.FileName, "[")
	parts := strings.SplitN(name, "] ", 2)
	if len(parts) != 2 {
		return ""
	}
	return filepath.Join(c.stores[parts[0]], strings.TrimSuffix(parts[1], ".vmdk")+"-flat.vmdk")
}

func disks(devices object) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			out = append(out, disk)
		}
	}
	return out
}

type object = []types.BaseVirtualDevice

func (c *cbt) snapshotTaken(id string) {
	vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: id}).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, disk := range disks(vm.Config.Hardware.Device) {
			b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if !ok {
				continue
			}
			c.seq++
			data, err := os.ReadFile(c.flat(b))
			if err != nil {
				continue
			}
			copyPath := filepath.Join(c.dir, fmt.Sprintf("cbt-%d", c.seq))
			if os.WriteFile(copyPath, data, 0o600) != nil {
				continue
			}
			// The snapshot's configuration shares its devices with the VM's: both now carry the id.
			b.ChangeId = fmt.Sprintf("52 74 65 72 6e %d/%d", c.seq, c.seq)
			c.copies[b.ChangeId] = copyPath
		}
	})
}

func (c *cbt) query(w http.ResponseWriter, body []byte) {
	snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: element(body, "snapshot")}).(*simulator.VirtualMachineSnapshot)
	if !ok {
		fault(w, "ManagedObjectNotFound", "The object has already been deleted or has not been completely created")
		return
	}
	key, _ := strconv.Atoi(element(body, "deviceKey"))
	start, _ := strconv.ParseInt(element(body, "startOffset"), 10, 64)
	id := element(body, "changeId")
	var disk *types.VirtualDisk
	for _, d := range disks(snap.Config.Hardware.Device) {
		if int(d.Key) == key {
			disk = d
		}
	}
	if disk == nil {
		fault(w, "InvalidArgument", "A specified parameter was not correct: deviceKey")
		return
	}
	b, _ := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if b == nil || snap.Config.ChangeTrackingEnabled == nil || !*snap.Config.ChangeTrackingEnabled {
		fault(w, "FileFault", "Change tracking is not active on the disk")
		return
	}
	now, err := os.ReadFile(c.flat(b))
	if err != nil {
		fault(w, "FileFault", err.Error())
		return
	}
	var then []byte
	if id != "*" {
		c.mu.Lock()
		path, known := c.copies[id]
		c.mu.Unlock()
		if known {
			then, err = os.ReadFile(path)
		}
		if !known || err != nil {
			fault(w, "InvalidArgument", "A specified parameter was not correct: changeId")
			return
		}
	}
	size := disk.CapacityInBytes
	var areas strings.Builder
	runStart, runLen := int64(-1), int64(0)
	flush := func() {
		if runStart >= 0 {
			fmt.Fprintf(&areas, "<changedArea><start>%d</start><length>%d</length></changedArea>", runStart, runLen)
		}
		runStart, runLen = -1, 0
	}
	chunk := func(data []byte, at, n int64) []byte {
		out := make([]byte, n)
		if at < int64(len(data)) {
			copy(out, data[at:])
		}
		return out
	}
	for at := start; at < size; at += area {
		n := int64(area)
		if at+n > size {
			n = size - at
		}
		cur := chunk(now, at, n)
		changed := false
		if then == nil {
			changed = !bytes.Equal(cur, make([]byte, n))
		} else {
			changed = !bytes.Equal(cur, chunk(then, at, n))
		}
		if changed {
			if runStart < 0 {
				runStart = at
			}
			runLen += n
		} else {
			flush()
		}
	}
	flush()
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>%s</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>`, start, size-start, areas.String())
}
