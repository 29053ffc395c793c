from auditpipe.cli import main

main()
