"""A tiny transformer with random weights under torch.profiler (CPU build): record_function
ranges, profile_memory, two ProfilerSteps, written by tensorboard_trace_handler."""
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler

torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(256, 64), nn.TransformerEncoderLayer(64, 4, 128, batch_first=True),
                      nn.Linear(64, 256))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randint(0, 256, (4, 32))
with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
             schedule=schedule(wait=0, warmup=1, active=2, repeat=1),
             on_trace_ready=tensorboard_trace_handler("/tmp/tinytrace/out", use_gzip=True)) as prof:
    for _ in range(3):
        with record_function("forward"):
            loss = model(x).logsumexp(-1).mean()
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()
            opt.zero_grad()
        prof.step()
