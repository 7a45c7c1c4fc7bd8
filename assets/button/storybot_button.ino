/*
  storybot_button.ino: the push-button board of the storybot robot.

  Protocol (docs/button-protocol.md): ASCII lines ending in "\n", at most 32 bytes, 115200 baud 8N1.
    board -> robot: "HELLO storybot-button 1.0" at boot, "DOWN", "UP" (and "LONG" when LONG_PRESS_MS > 0)
    robot -> board: "LED IDLE" | "LED LISTENING" | "LED THINKING" | "LED SPEAKING" | "LED ERROR"

  Boards: Arduino Nano or Uno (ATmega328P), or a Raspberry Pi Pico with the arduino-pico core. Any other Arduino
  board works with BUTTON_PIN and LED_PIN changed below.

  Wiring (one resistor, nothing else):

                Nano / Uno                               Pico
    button      D2 ---[switch]--- GND                    GP15 ---[switch]--- GND
    LED         D9 ---[220 ohm]---(+LED-)--- GND         GP16 ---[220 ohm]---(+LED-)--- GND
    USB         to the robot                             to the robot

    The button needs no resistor: the pin's internal pull-up (INPUT_PULLUP) holds it HIGH, pressing pulls it LOW.
    The LED's long leg (anode, +) goes to the resistor, its short leg (cathode, -) to GND. An illuminated arcade
    button works well (a 5 V type). For a first test without wiring, set LED_PIN to LED_BUILTIN.

  LED patterns: IDLE off, LISTENING steady on, THINKING fast blink (4 per second), SPEAKING slow blink (once a
  second), ERROR two short flashes every 1.5 s. Before the first LED command (and, on boards with native USB,
  whenever no program has the port open) a short blip every 2 s: powered, waiting for the robot.

  The firmware debounces the button (10 ms of a stable level); the robot debounces again and decides what a press,
  a release and a long press are. Nothing here blocks: a full USB buffer drops a line rather than freezing the
  button and the LED.
*/

#include <Arduino.h>
#include <string.h>

#if defined(ARDUINO_ARCH_RP2040)
const uint8_t BUTTON_PIN = 15;  // GP15
const uint8_t LED_PIN = 16;     // GP16
#else
const uint8_t BUTTON_PIN = 2;  // D2
const uint8_t LED_PIN = 9;     // D9
#endif

const unsigned long BAUD = 115200;
const unsigned long DEBOUNCE_MS = 10;   // the pin must keep its level this long before it counts
const unsigned long LONG_PRESS_MS = 0;  // 0: the robot times long presses (button.long_press_ms); else send LONG
const size_t MAX_LINE = 32;             // the protocol's limit, counting the "\n"
const char HELLO_LINE[] = "HELLO storybot-button 1.0";

enum class Led : uint8_t { Waiting, Idle, Listening, Thinking, Speaking, Error };

Led led = Led::Waiting;
unsigned long ledSince = 0;  // millis() when the current pattern started, so a blink starts with "on"

bool rawPressed = false;     // the pin at the last look
bool stablePressed = false;  // the debounced level, as last reported
unsigned long rawChangedAt = 0;
unsigned long pressedAt = 0;
bool longSent = false;

char line[MAX_LINE];     // the line being received, without its "\n"
size_t lineLength = 0;
bool skipping = false;   // inside an over-long line: drop everything up to its "\n"
bool helloSent = false;

// Sends one line, or drops it when it cannot go out at once: with native USB and nobody reading, a blocking write
// would freeze the button and the LED. Over a UART (Nano, Uno) the buffer always drains at the line rate.
bool sendLine(const char *text) {
  size_t length = strlen(text);
  if (!Serial || Serial.availableForWrite() < (int)(length + 1)) {
    return false;
  }
  Serial.write(text, length);
  Serial.write('\n');
  return true;
}

void setLed(Led state) {
  if (state != led) {
    led = state;
    ledSince = millis();
  }
}

bool ledIsOn(unsigned long t) {  // t: milliseconds since the pattern started
  switch (led) {
    case Led::Waiting:
      return t % 2000 < 40;
    case Led::Idle:
      return false;
    case Led::Listening:
      return true;
    case Led::Thinking:
      return t % 250 < 125;
    case Led::Speaking:
      return t % 1000 < 500;
    case Led::Error: {
      unsigned long phase = t % 1500;
      return phase < 100 || (phase >= 250 && phase < 350);
    }
  }
  return false;
}

// A whole line from the robot; anything it does not know (an empty line included) is ignored.
void handleLine(const char *text) {
  if (strcmp(text, "LED IDLE") == 0) {
    setLed(Led::Idle);
  } else if (strcmp(text, "LED LISTENING") == 0) {
    setLed(Led::Listening);
  } else if (strcmp(text, "LED THINKING") == 0) {
    setLed(Led::Thinking);
  } else if (strcmp(text, "LED SPEAKING") == 0) {
    setLed(Led::Speaking);
  } else if (strcmp(text, "LED ERROR") == 0) {
    setLed(Led::Error);
  }
}

// Reads what has arrived; a line longer than MAX_LINE is thrown away up to its "\n" (resynchronisation).
void pollSerial() {
  while (Serial.available() > 0) {
    char c = (char)Serial.read();
    if (c == '\n') {
      if (!skipping) {
        if (lineLength > 0 && line[lineLength - 1] == '\r') {
          lineLength--;
        }
        line[lineLength] = '\0';
        handleLine(line);
      }
      lineLength = 0;
      skipping = false;
    } else if (skipping) {
      // still inside an over-long line
    } else if (lineLength >= MAX_LINE - 1) {  // no room left for the "\n": this is no frame
      lineLength = 0;
      skipping = true;
    } else {
      line[lineLength++] = c;
    }
  }
}

void pollButton(unsigned long now) {
  bool pressed = digitalRead(BUTTON_PIN) == LOW;
  if (pressed != rawPressed) {
    rawPressed = pressed;
    rawChangedAt = now;
  }
  if (rawPressed != stablePressed && now - rawChangedAt >= DEBOUNCE_MS) {
    stablePressed = rawPressed;
    if (stablePressed) {
      pressedAt = now;
      longSent = false;
      sendLine("DOWN");
    } else {
      sendLine("UP");
    }
  }
  if (LONG_PRESS_MS > 0 && stablePressed && !longSent && now - pressedAt >= LONG_PRESS_MS) {
    longSent = true;
    sendLine("LONG");
  }
}

// HELLO once at boot; a board with native USB (Pico) says it again each time a program opens the port, because
// nobody heard it before. When the port closes there, the LED goes back to "waiting for the robot".
void pollHost() {
  if (Serial) {
    if (!helloSent) {
      helloSent = sendLine(HELLO_LINE);
    }
  } else if (helloSent) {
    helloSent = false;
    setLed(Led::Waiting);
  }
}

void setup() {
  pinMode(BUTTON_PIN, INPUT_PULLUP);
  pinMode(LED_PIN, OUTPUT);
  digitalWrite(LED_PIN, LOW);
  Serial.begin(BAUD);
  ledSince = millis();
}

void loop() {
  unsigned long now = millis();
  pollHost();
  pollSerial();
  pollButton(now);
  digitalWrite(LED_PIN, ledIsOn(now - ledSince) ? HIGH : LOW);
}
