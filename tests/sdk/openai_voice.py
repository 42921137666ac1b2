"""The official OpenAI Python SDK through keygate, with only base_url and api_key changed:
speech, transcription and a Realtime session (issue #22). Run by tests/sdk.rs against
the real keygate and `keygate mock-provider`; prints one JSON line of what it saw."""

import hashlib
import json
import os
import sys

import openai

client = openai.OpenAI(
    base_url=os.environ["KEYGATE_BASE_URL"],
    api_key=os.environ["KEYGATE_API_KEY"],
    max_retries=0,
)
seen = {"sdk": openai.__version__}

speech = client.audio.speech.create(
    model="gpt-4o-mini-tts", voice="alloy", input="Hello from keygate."
)
audio = speech.read()
seen["speech_bytes"] = len(audio)
seen["speech_head"] = audio[:3].decode("latin-1")

wav = sys.argv[1]
with open(wav, "rb") as f:
    seen["wav_sha256"] = hashlib.sha256(f.read()).hexdigest()
with open(wav, "rb") as f:
    transcript = client.audio.transcriptions.create(model="whisper-1", file=f)
seen["transcript"] = transcript.text

with client.realtime.connect(model="gpt-realtime") as conn:
    seen["realtime_first"] = conn.recv().type
    conn.response.create()
    for event in conn:
        if event.type == "response.done":
            seen["realtime_usage"] = event.response.usage.total_tokens
            break

print(json.dumps(seen))
