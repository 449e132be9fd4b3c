#!/usr/bin/env python3
"""Writes message.eml and envelope.json of this case: a staff announcement with 250 To and
300 Cc addresses (2 more only in the header), and 50 envelope-only Bcc: 600 envelope recipients,
so the relay must split into 500 (250 To + 250 Cc) + 100 (50 Cc + 50 Bcc).
Run from this directory: python3 generate.py"""
import json

to = [f"Employee {i:03d} <employee{i:03d}@contoso.com>" for i in range(250)]
to.append("former.employee@contoso.com")  # header only: not in the envelope
cc = [f"contractor{i:03d}@partner.example" for i in range(300)]
cc.append("Old List <old-list@partner.example>")  # header only
bcc = [f"board{i:03d}@board.example" for i in range(50)]

head = (
    "From: HR Department <hr@contoso.com>\r\n"
    "To: " + ",\r\n ".join(to) + "\r\n"
    "Cc: " + ",\r\n ".join(cc) + "\r\n"
    "Subject: Office closed on Monday\r\n"
    "Date: Wed, 3 Apr 2024 16:00:00 +0000\r\n"
    "Message-ID: <office-closed-20240403@contoso.com>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "The office is closed on Monday for maintenance.\r\n"
)
open("message.eml", "wb").write(head.encode())
rcpt = [f"employee{i:03d}@contoso.com" for i in range(250)]
rcpt += [f"contractor{i:03d}@partner.example" for i in range(300)]
rcpt += bcc
assert len(rcpt) == 600
open("envelope.json", "w").write(json.dumps({"mail_from": "hr@contoso.com", "rcpt_to": rcpt}, indent=1) + "\n")
