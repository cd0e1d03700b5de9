package testenv

import (
	"fmt"
	"os"
	"path/filepath"
)

// SippUAS is a sipp scenario: sipp's built-in UAS without its 180 Ringing.
// The UAS sends the 180 and the 200 back to back; Kamailio relays them from two UDP workers,
// so on a loaded machine the 180 reaches the UAC after the 200, and sipp's
// UAC aborts the call ("unexpected message while pausing"): reproduced with
// three busy loops on two cores, 20 calls of 20 failed with the built-in UAS
// and none of 20 with this one. The ACK is optional for the same reason: a
// loaded proxy may relay the BYE first.
const SippUAS = `<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="sipside uas">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv request="ACK" optional="true" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0
    ]]>
  </send>
</scenario>
`

// WriteSippUAS writes SippUAS into dir and returns the path for sipp -sf.
func WriteSippUAS(dir string) (string, error) {
	p := filepath.Join(dir, "sipp-uas.xml")
	if err := os.WriteFile(p, []byte(SippUAS), 0o644); err != nil {
		return "", fmt.Errorf("write sipp uas scenario: %w", err)
	}
	return p, nil
}
