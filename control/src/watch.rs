//! `kxdpctl trace` and `kxdpctl capture`: a node's `Watch` reply as text,
//! JSON, or a pcapng file with a comment per packet naming its verdict.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use kxdp_proto::dataplane::{WatchRecord, WatchReply};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use serde::Serialize;

/// One traced packet, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct TracedPacket {
    pub time_unix_ns: u64,
    pub worker: u32,
    pub ingress: String,
    pub handed: bool,
    pub generation: u64,
    pub epoch: u32,
    pub steps: Vec<String>,
    pub verdict: String,
}

#[derive(Debug, Serialize)]
pub struct TraceView {
    pub node: String,
    pub packets: Vec<TracedPacket>,
    pub timed_out: bool,
}

impl TraceView {
    pub fn new(node: String, r: WatchReply) -> TraceView {
        TraceView {
            node,
            packets: r
                .records
                .into_iter()
                .map(|r| TracedPacket {
                    time_unix_ns: r.time_unix_ns,
                    worker: r.worker,
                    ingress: r.ingress,
                    handed: r.handed,
                    generation: r.generation,
                    epoch: r.epoch,
                    steps: r.steps,
                    verdict: r.verdict,
                })
                .collect(),
            timed_out: r.timed_out,
        }
    }
}

/// Each packet: a header line, its decisions indented, its verdict.
pub fn trace_text(v: &TraceView) -> String {
    let mut s = String::new();
    for (i, p) in v.packets.iter().enumerate() {
        let handed = if p.handed { ", handed over" } else { "" };
        s += &format!(
            "packet {}: node {}, worker {}{handed}, in {}, generation {} (epoch {})\n",
            i + 1,
            v.node,
            p.worker,
            p.ingress,
            p.generation,
            p.epoch
        );
        for step in &p.steps {
            s += &format!("    {step}\n");
        }
        s += &format!("    verdict: {}\n", p.verdict);
    }
    s
}

/// The comment a captured packet carries: where it came in, its verdict.
pub fn comment(r: &WatchRecord) -> String {
    format!(
        "in {} worker {}: {} (generation {})",
        r.ingress, r.worker, r.verdict, r.generation
    )
}

/// Writes `records` as pcapng: one Ethernet interface named after the
/// capture (`name`), nanosecond timestamps, a comment per packet.
pub fn write_pcapng(out: impl Write, name: &str, records: &[WatchRecord]) -> std::io::Result<()> {
    let err = |e: pcap_file::PcapError| std::io::Error::other(e.to_string());
    let mut w = PcapNgWriter::new(out).map_err(err)?;
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0,
        options: vec![
            InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
            InterfaceDescriptionOption::IfTsResol(9),
        ],
    })
    .map_err(err)?;
    for r in records {
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(r.time_unix_ns),
            original_len: r.frame.len() as u32,
            data: Cow::Borrowed(&r.frame),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment(r)))],
        })
        .map_err(err)?;
    }
    w.into_inner().flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    #[test]
    fn pcapng_holds_each_frame_with_its_verdict() {
        let records: Vec<WatchRecord> = (0..3u8)
            .map(|i| WatchRecord {
                time_unix_ns: 1_700_000_000_000_000_000 + u64::from(i),
                ingress: "veth1".into(),
                verdict: format!("drop reason_{i}"),
                frame: vec![i; 60 + usize::from(i)],
                ..Default::default()
            })
            .collect();
        let mut file = Vec::new();
        write_pcapng(&mut file, "kxdp n1 drop", &records).unwrap();
        let mut reader = PcapNgReader::new(&file[..]).unwrap();
        let mut got = vec![];
        while let Some(block) = reader.next_block() {
            if let Block::EnhancedPacket(p) = block.unwrap() {
                let Some(EnhancedPacketOption::Comment(c)) = p.options.first() else {
                    panic!("no comment")
                };
                got.push((
                    p.timestamp.as_nanos() as u64,
                    p.data.to_vec(),
                    c.to_string(),
                ));
            }
        }
        assert_eq!(got.len(), 3);
        for (r, (ts, data, c)) in records.iter().zip(got) {
            assert_eq!((ts, &data), (r.time_unix_ns, &r.frame));
            assert!(c.contains(&r.verdict) && c.starts_with("in veth1"), "{c}");
        }
    }
}
