// AudioWorklet: hands the microphone's samples to the page as PCM16, in
// blocks of about 20 ms (the audio thread must not do more).
class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Int16Array(Math.round(sampleRate / 50));
    this.fill = 0;
    this.peak = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      const s = Math.max(-1, Math.min(1, ch[i]));
      this.peak = Math.max(this.peak, Math.abs(s));
      this.block[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === this.block.length) {
        this.port.postMessage({ pcm: this.block, peak: this.peak });
        this.block = new Int16Array(this.block.length);
        this.fill = 0;
        this.peak = 0;
      }
    }
    return true;
  }
}
registerProcessor('tolk-capture', Capture);
