//! Continuo without a host: nice-plug's standalone wrapper around the plugin, with its editor.
//! `continuo-standalone --help` lists the audio and MIDI backends (`-b dummy` needs neither).

fn main() {
    nice_plug::prelude::nice_export_standalone::<continuo::Continuo>();
}
