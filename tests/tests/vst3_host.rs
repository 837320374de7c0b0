//! A smoke test of the VST3 side: loads `Continuo.vst3` with a bare-bones host written against
//! the raw VST3 COM interfaces, and checks the class info, the buses, one block of MIDI thru and
//! a state save and restore. The CLAP tests cover behaviour in depth; both formats share the same
//! plugin code and differ only in nice-plug's wrapper.

#![allow(clippy::undocumented_unsafe_blocks)] // Every call below is a raw VST3 COM call.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr::null_mut;

use anyhow::{ensure, Context, Result};
use vst3::Steinberg::Vst::BusDirections_::{kInput, kOutput};
use vst3::Steinberg::Vst::Event_::EventTypes_::{kNoteOffEvent, kNoteOnEvent};
use vst3::Steinberg::Vst::MediaTypes_::{kAudio, kEvent};
use vst3::Steinberg::Vst::ProcessModes_::kRealtime;
use vst3::Steinberg::Vst::SymbolicSampleSizes_::kSample32;
use vst3::Steinberg::Vst::{
    AudioBusBuffers, AudioBusBuffers__type0, Event, Event__type0, IAudioProcessor,
    IAudioProcessorTrait, IComponent, IComponentTrait, IEventList, IEventListTrait, NoteOffEvent,
    NoteOnEvent, ProcessData, ProcessSetup,
};
use vst3::Steinberg::{
    kInvalidArgument, kResultFalse, kResultOk, tresult, IBStream, IBStreamTrait, IPluginBaseTrait,
    IPluginFactory, IPluginFactoryTrait, PClassInfo,
};
use vst3::{Class, ComPtr, ComWrapper, Interface};

/// An event list with fixed capacity: the plugin adds to it inside `process()`, where growing a
/// `Vec` would trip the allocation check.
struct EventList {
    events: RefCell<Vec<Event>>,
}

impl Class for EventList {
    type Interfaces = (IEventList,);
}

impl IEventListTrait for EventList {
    unsafe fn getEventCount(&self) -> i32 {
        self.events.borrow().len() as i32
    }

    unsafe fn getEvent(&self, index: i32, event: *mut Event) -> tresult {
        match self.events.borrow().get(index as usize) {
            Some(found) => {
                unsafe { *event = *found };
                kResultOk
            }
            None => kInvalidArgument,
        }
    }

    unsafe fn addEvent(&self, event: *mut Event) -> tresult {
        let mut events = self.events.borrow_mut();
        if events.len() == events.capacity() {
            return kResultFalse;
        }
        events.push(unsafe { *event });
        kResultOk
    }
}

/// An in-memory `IBStream`.
struct Stream {
    data: RefCell<Vec<u8>>,
    position: Cell<usize>,
}

impl Class for Stream {
    type Interfaces = (IBStream,);
}

impl IBStreamTrait for Stream {
    unsafe fn read(&self, buffer: *mut c_void, n: i32, read: *mut i32) -> tresult {
        let data = self.data.borrow();
        let start = self.position.get().min(data.len());
        let count = (n.max(0) as usize).min(data.len() - start);
        unsafe { std::ptr::copy_nonoverlapping(data[start..].as_ptr(), buffer.cast(), count) };
        self.position.set(start + count);
        if !read.is_null() {
            unsafe { *read = count as i32 };
        }
        kResultOk
    }

    unsafe fn write(&self, buffer: *mut c_void, n: i32, written: *mut i32) -> tresult {
        let bytes = unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), n.max(0) as usize) };
        let mut data = self.data.borrow_mut();
        let start = self.position.get();
        if data.len() < start + bytes.len() {
            data.resize(start + bytes.len(), 0);
        }
        data[start..start + bytes.len()].copy_from_slice(bytes);
        self.position.set(start + bytes.len());
        if !written.is_null() {
            unsafe { *written = bytes.len() as i32 };
        }
        kResultOk
    }

    unsafe fn seek(&self, pos: i64, mode: i32, result: *mut i64) -> tresult {
        let base = match mode {
            0 => 0,
            1 => self.position.get() as i64,
            _ => self.data.borrow().len() as i64,
        };
        let position = (base + pos).max(0);
        self.position.set(position as usize);
        if !result.is_null() {
            unsafe { *result = position };
        }
        kResultOk
    }

    unsafe fn tell(&self, pos: *mut i64) -> tresult {
        unsafe { *pos = self.position.get() as i64 };
        kResultOk
    }
}

fn note_event(offset: i32, on: bool, pitch: i16) -> Event {
    let body = if on {
        Event__type0 {
            noteOn: NoteOnEvent {
                channel: 0,
                pitch,
                tuning: 0.0,
                velocity: 0.5,
                length: 0,
                noteId: -1,
            },
        }
    } else {
        Event__type0 {
            noteOff: NoteOffEvent {
                channel: 0,
                pitch,
                velocity: 0.0,
                noteId: -1,
                tuning: 0.0,
            },
        }
    };
    Event {
        busIndex: 0,
        sampleOffset: offset,
        ppqPosition: 0.0,
        flags: 0,
        r#type: if on { kNoteOnEvent } else { kNoteOffEvent } as u16,
        __field0: body,
    }
}

/// Processes one block and returns the output notes as `(offset, is_on, pitch)`.
fn process(
    processor: &ComPtr<IAudioProcessor>,
    frames: usize,
    input: &[Event],
) -> Result<Vec<(i32, bool, i16)>> {
    let inputs = ComWrapper::new(EventList {
        events: RefCell::new(input.to_vec()),
    });
    let outputs = ComWrapper::new(EventList {
        events: RefCell::new(Vec::with_capacity(1024)),
    });
    let (mut left, mut right) = (vec![0f32; frames], vec![0f32; frames]);
    let mut channels = [left.as_mut_ptr(), right.as_mut_ptr()];
    let mut bus = AudioBusBuffers {
        numChannels: 2,
        silenceFlags: 0,
        __field0: AudioBusBuffers__type0 {
            channelBuffers32: channels.as_mut_ptr(),
        },
    };
    let mut data = ProcessData {
        processMode: kRealtime as i32,
        symbolicSampleSize: kSample32 as i32,
        numSamples: frames as i32,
        numInputs: 0,
        numOutputs: 1,
        inputs: null_mut(),
        outputs: &mut bus,
        inputParameterChanges: null_mut(),
        outputParameterChanges: null_mut(),
        inputEvents: inputs
            .to_com_ptr::<IEventList>()
            .context("event list")?
            .as_ptr(),
        outputEvents: outputs
            .to_com_ptr::<IEventList>()
            .context("event list")?
            .as_ptr(),
        processContext: null_mut(),
    };
    ensure!(
        unsafe { processor.process(&mut data) } == kResultOk,
        "process failed"
    );
    let notes = outputs
        .events
        .borrow()
        .iter()
        .filter_map(|e| match u32::from(e.r#type) {
            t if t == kNoteOnEvent => {
                Some((e.sampleOffset, true, unsafe { e.__field0.noteOn.pitch }))
            }
            t if t == kNoteOffEvent => {
                Some((e.sampleOffset, false, unsafe { e.__field0.noteOff.pitch }))
            }
            _ => None,
        })
        .collect();
    Ok(notes)
}

#[test]
fn vst3_loads_processes_and_keeps_state() -> Result<()> {
    let clap = continuo_tests::bundle_path()?;
    let so = clap.with_file_name("Continuo.vst3/Contents/x86_64-linux/Continuo.so");
    let library =
        unsafe { libloading::Library::new(&so) }.with_context(|| format!("{}", so.display()))?;
    let module_entry: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> bool> =
        unsafe { library.get(b"ModuleEntry") }?;
    let module_exit: libloading::Symbol<unsafe extern "C" fn() -> bool> =
        unsafe { library.get(b"ModuleExit") }?;
    let get_factory: libloading::Symbol<unsafe extern "system" fn() -> *mut c_void> =
        unsafe { library.get(b"GetPluginFactory") }?;
    ensure!(unsafe { module_entry(null_mut()) });
    {
        let factory = unsafe { ComPtr::from_raw(get_factory().cast::<IPluginFactory>()) }
            .context("no factory")?;
        ensure!(unsafe { factory.countClasses() } >= 1);
        let mut info: PClassInfo = unsafe { std::mem::zeroed() };
        ensure!(unsafe { factory.getClassInfo(0, &mut info) } == kResultOk);
        let text = |chars: &[i8]| {
            chars
                .iter()
                .take_while(|c| **c != 0)
                .map(|c| *c as u8 as char)
                .collect::<String>()
        };
        assert_eq!(text(&info.name), "Continuo");
        assert_eq!(text(&info.category), "Audio Module Class");
        let cid: Vec<u8> = info.cid.iter().map(|b| *b as u8).collect();
        let class_id = *b"ContinuoMoonbeam";
        // nice-plug stores the class id in the platform's COM byte order.
        let mut swapped = class_id;
        swapped[0..4].reverse();
        swapped[4..6].reverse();
        swapped[6..8].reverse();
        assert!(cid == class_id || cid == swapped, "{cid:?}");

        let mut object: *mut c_void = null_mut();
        let created = unsafe {
            factory.createInstance(
                info.cid.as_ptr(),
                IComponent::IID.as_ptr().cast(),
                &mut object,
            )
        };
        ensure!(created == kResultOk, "createInstance: {created}");
        let component =
            unsafe { ComPtr::from_raw(object.cast::<IComponent>()) }.context("null component")?;
        ensure!(unsafe { component.initialize(null_mut()) } == kResultOk);
        unsafe {
            assert_eq!(component.getBusCount(kEvent as i32, kInput as i32), 1);
            assert_eq!(component.getBusCount(kEvent as i32, kOutput as i32), 1);
            assert_eq!(component.getBusCount(kAudio as i32, kInput as i32), 0);
            assert_eq!(component.getBusCount(kAudio as i32, kOutput as i32), 1);
        }
        let processor: ComPtr<IAudioProcessor> = component.cast().context("no IAudioProcessor")?;
        let mut setup = ProcessSetup {
            processMode: kRealtime as i32,
            symbolicSampleSize: kSample32 as i32,
            maxSamplesPerBlock: 512,
            sampleRate: 48_000.0,
        };
        unsafe {
            ensure!(processor.setupProcessing(&mut setup) == kResultOk);
            for (media, direction) in [(kAudio, kOutput), (kEvent, kInput), (kEvent, kOutput)] {
                component.activateBus(media as i32, direction as i32, 0, 1);
            }
            ensure!(component.setActive(1) == kResultOk);
            processor.setProcessing(1);
        }
        // Thru at exact offsets (the built-in voice plays too; only MIDI is checked).
        process(&processor, 512, &[])?;
        let out = process(
            &processor,
            512,
            &[note_event(100, true, 60), note_event(300, false, 60)],
        )?;
        assert!(
            out.contains(&(100, true, 60)) && out.contains(&(300, false, 60)),
            "{out:?}"
        );

        // State: save, then restore into the same instance.
        let stream = ComWrapper::new(Stream {
            data: RefCell::new(Vec::new()),
            position: Cell::new(0),
        });
        let stream_ptr = stream.to_com_ptr::<IBStream>().context("stream")?;
        ensure!(unsafe { component.getState(stream_ptr.as_ptr()) } == kResultOk);
        let saved = stream.data.borrow().clone();
        ensure!(
            String::from_utf8_lossy(&saved).contains("\"silenc\""),
            "{} bytes of state",
            saved.len()
        );
        stream.position.set(0);
        ensure!(unsafe { component.setState(stream_ptr.as_ptr()) } == kResultOk);

        unsafe {
            processor.setProcessing(0);
            component.setActive(0);
            component.terminate();
        }
    }
    ensure!(unsafe { module_exit() });
    Ok(())
}
