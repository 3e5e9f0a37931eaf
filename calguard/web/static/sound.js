// The station's alarm sounds, made with Web Audio: no sound file, nothing fetched.
//
// One pattern per priority, after IEC 60601-1-8's: high is a burst of five pulses
// (three, a gap, two) played twice and repeated every 6 s; medium is three pulses every
// 12 s; low is two lower pulses every 30 s; a monitor that the page has lost uses the
// medium pattern on its own pitch. What sounds is decided by the monitor (the worst alarm
// that annunciates: acknowledge, audio pause and override silence an alarm there), never
// here: the page has no mute. A browser that blocks audio until someone clicks is said
// on screen ("SOUND OFF") until a click allows it.
"use strict";

window.CalguardSound = (function () {
  const PATTERNS = {
    high: { pitch: 988, pulses: [0, 0.18, 0.36, 0.72, 0.9, 1.6, 1.78, 1.96, 2.32, 2.5], every: 6 },
    medium: { pitch: 740, pulses: [0, 0.25, 0.5], every: 12 },
    low: { pitch: 523, pulses: [0, 0.3], every: 30 },
    offline: { pitch: 622, pulses: [0, 0.25, 0.5], every: 10 },
  };
  const PULSE_S = 0.13;
  let context = null;
  let playing = null; // the pattern's name
  let timer = null;
  let bursts = 0;

  function make() {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    try {
      return new Context();
    } catch (error) {
      return null;
    }
  }

  function state() {
    if (!context) return "unsupported";
    return context.state === "running" ? "on" : "blocked";
  }

  function pulse(at, pitch) {
    const osc = context.createOscillator();
    const gain = context.createGain();
    osc.type = "triangle";
    osc.frequency.value = pitch;
    gain.gain.setValueAtTime(0, at);
    gain.gain.linearRampToValueAtTime(0.25, at + 0.02);
    gain.gain.setValueAtTime(0.25, at + PULSE_S - 0.03);
    gain.gain.linearRampToValueAtTime(0, at + PULSE_S);
    osc.connect(gain).connect(context.destination);
    osc.start(at);
    osc.stop(at + PULSE_S + 0.01);
  }

  function burst() {
    const pattern = PATTERNS[playing];
    if (!pattern || state() !== "on") return;
    const start = context.currentTime + 0.05;
    for (const offset of pattern.pulses) pulse(start + offset, pattern.pitch);
    bursts += 1;
  }

  function play(name) {
    if (name === playing) return;
    clearInterval(timer);
    timer = null;
    playing = name || null;
    if (!playing) return;
    burst();
    timer = setInterval(burst, PATTERNS[playing].every * 1000);
  }

  function allow() {
    if (!context) context = make();
    if (context && context.state !== "running") {
      return context.resume().then(() => {
        if (playing) burst();
        return state();
      });
    }
    return Promise.resolve(state());
  }

  context = make();
  if (context && context.state !== "running") {
    // a click or a key anywhere is the gesture browsers wait for
    const once = () => allow().then(() => document.dispatchEvent(new Event("calguard-sound")));
    document.addEventListener("click", once, { capture: true });
    document.addEventListener("keydown", once, { capture: true });
  }

  return {
    play: play,
    allow: allow,
    state: state,
    playing: () => playing,
    bursts: () => bursts,
  };
})();
