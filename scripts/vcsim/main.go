// A vCenter simulator for Tern's vSphere tests: govmomi's simulator (vcsim) with one datacenter,
// one cluster of one host, one local datastore and two VMs, serving HTTPS with a certificate
// signed by a CA of its own (written to DIR/ca.pem), so the connector's certificate checking is
// tested as a user would configure it.
//
// Built offline from Debian's golang-go and golang-github-vmware-govmomi-dev by scripts/vcsim.sh.
// On start it prints one JSON line: {"url": ..., "datastores": {name: local directory}}.
package main

import (
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
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{certificates(*dir)}}
	s := model.Service.NewServer()

	stores := map[string]string{}
	for _, ref := range simulator.Map.All("Datastore") {
		ds := simulator.Map.Get(ref.Reference()).(*simulator.Datastore)
		stores[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
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
